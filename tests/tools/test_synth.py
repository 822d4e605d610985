"""pfcn-synth command line: files written, flags honoured, errors reported as one line with exit code 2."""

from __future__ import annotations

import json

from pfcn.tools.synth import main


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "train"
    rc = main(["--out", str(out), "--num", "3", "--size", "40", "56", "--seed", "2", "--things", "5",
               "--stuff", "2", "--no-progress"])
    assert rc == 0
    js = json.loads((out / "panoptic.json").read_text())
    assert [im["file_name"] for im in js["images"]] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert {(im["height"], im["width"]) for im in js["images"]} == {(40, 56)}
    assert sum(c["isthing"] for c in js["categories"]) == 5 and len(js["categories"]) == 7
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    printed = capsys.readouterr().out
    assert "3 image(s) 40x56" in printed and "next:" in printed


def test_cli_png_and_same_bytes(tmp_path):
    args = ["--num", "2", "--size", "32", "32", "--png", "--no-progress"]
    assert main(["--out", str(tmp_path / "a"), *args]) == 0
    assert main(["--out", str(tmp_path / "b"), *args]) == 0
    for sub in ("images/000001.png", "panoptic/000001.png", "panoptic.json"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()


def test_cli_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--things", "0", "--stuff", "0"]) == 2
    assert "error: need at least one thing or stuff class" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--num", "0"]) == 2
    assert "num must be >= 1" in capsys.readouterr().err
