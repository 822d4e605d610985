"""Checkpoints: official key layout, strict loading, clear mismatch reports, safe unpickling, atomic saving.

The official R50 layout comes from ../shared/reference/official-r50-keys.txt (keys, shapes, param/buffer), dumped from
the official code; a checkpoint built from that list must load into our model with strict matching.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfcn.checkpoint import (CheckpointError, CheckpointWriteError, atomic_torch_save, checkpoint_meta,
                             load_checkpoint_file, load_weights, match_state_dict, save_checkpoint)
from pfcn.config import cfg_to_yaml, load_config
from pfcn.metadata import CategoryMeta
from pfcn.model import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
KEY_LIST = REPO.parent / "shared" / "reference" / "official-r50-keys.txt"


class NotAWeight:
    """A custom class: pickling it into a checkpoint makes the file need arbitrary unpickling."""

    def __init__(self) -> None:
        self.value = torch.zeros(2)


def read_key_list(path: Path = KEY_LIST) -> tuple[dict[str, tuple[tuple[int, ...], str, str]], str]:
    """key -> (shape, dtype, "param"|"buffer"), plus the header comment text."""
    entries: dict[str, tuple[tuple[int, ...], str, str]] = {}
    header = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            header.append(line)
            continue
        if not line.strip():
            continue
        key, shape, dtype, kind = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        entries[key] = (dims, dtype, kind)
    return entries, "\n".join(header)


def build(config: str, *overrides: str):
    cfg = load_config(CONFIGS / config, ["MODEL.DEVICE", "cpu", *overrides])
    return build_model(cfg).eval(), cfg


def random_official_state_dict(entries, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen, dtype=getattr(torch, dtype)) for k, (shape, dtype, _) in
            entries.items()}


@pytest.fixture(scope="module")
def key_list():
    if not KEY_LIST.is_file():
        pytest.fail(f"reference key list missing: {KEY_LIST}")
    return read_key_list()


@pytest.fixture(scope="module")
def r50():
    model, _ = build("PanopticFCN-R50-1x.yaml")
    return model


@pytest.fixture()
def small():
    torch.manual_seed(0)
    model, cfg = build("PanopticFCN-Small.yaml")
    return model, cfg


# ----------------------------------------------------------------------------------------------- official layout
def test_r50_state_dict_equals_official_key_list(key_list, r50):
    entries, header = key_list
    own = r50.state_dict()
    assert sorted(own) == sorted(entries)
    wrong = {k: (tuple(v.shape), entries[k][0]) for k, v in own.items() if tuple(v.shape) != entries[k][0]}
    assert not wrong, f"shapes differ from the official list: {wrong}"
    assert all(str(v.dtype) == f"torch.{entries[k][1]}" for k, v in own.items())


def test_r50_parameters_and_buffers_as_official(key_list, r50):
    entries, header = key_list
    stated = re.search(r"\((\d+) in parameters", header)
    assert stated is not None, "the key list header should state the parameter count"
    assert int(stated.group(1)) == 36_999_511
    params = dict(r50.named_parameters())
    assert sum(p.numel() for p in params.values()) == 36_999_511
    persistent_buffers = set(r50.state_dict()) - set(params)
    assert {k for k, e in entries.items() if e[2] == "param"} == set(params)
    assert {k for k, e in entries.items() if e[2] == "buffer"} == persistent_buffers
    # FrozenBN statistics are buffers and there is no num_batches_tracked anywhere.
    assert not any(k.endswith("num_batches_tracked") for k in r50.state_dict())


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain_state_dict", "detectron2_model_key"])
def test_official_layout_checkpoint_loads_strictly(key_list, wrapped, tmp_path):
    entries, _ = key_list
    model, _ = build("PanopticFCN-R50-1x.yaml")
    state = random_official_state_dict(entries, seed=1 + int(wrapped))
    path = tmp_path / "official.pth"
    torch.save({"model": state, "iteration": 89999} if wrapped else state, path)
    ckpt = load_weights(model, path)
    assert checkpoint_meta(ckpt) is None  # an official file carries no categories
    own = model.state_dict()
    not_landed = [k for k in entries if not torch.equal(own[k], state[k])]
    assert not not_landed, f"values did not reach the model: {not_landed[:5]}"
    if wrapped:
        assert ckpt["iteration"] == 89999


# ----------------------------------------------------------------------------------------------- mismatches
def test_mismatches_are_listed_by_name_and_nothing_is_loaded(small):
    model, _ = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in before.items()}
    missing = "position_head.out_sem.weight"
    shaped = "thing_generator.embed_extractor.weight"
    del state[missing]
    state["backbone.extra_layer.weight"] = torch.zeros(3)
    state[shaped] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(CheckpointError) as err:
        match_state_dict(model, state, source="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg
    assert "1 missing keys" in msg and missing in msg
    assert "1 unexpected keys" in msg and "backbone.extra_layer.weight" in msg
    assert "1 wrongly shaped" in msg and shaped in msg and "(7, 7, 1, 1)" in msg
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed match must leave the model untouched"


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_each_kind_of_mismatch_alone_is_refused(small, kind, tmp_path):
    model, _ = small
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "position_head.out_inst.bias"
    if kind == "missing":
        del state[key]
        expected = ["missing keys", key]
    elif kind == "unexpected":
        state["position_head.out_extra.bias"] = torch.zeros(4)
        expected = ["unexpected keys", "position_head.out_extra.bias"]
    else:
        state[key] = torch.zeros(5)
        expected = ["wrongly shaped", key, "(5,)", f"({model.position_head.out_inst.out_channels},)"]
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert str(path) in msg
    for text in expected:
        assert text in msg


def test_many_mismatches_are_capped_but_counted(small, key_list):
    """Loading an R50 file into the small model: every kind is reported, with counts, without a 300-line message."""
    model, _ = small
    state = random_official_state_dict(key_list[0])
    with pytest.raises(CheckpointError) as err:
        match_state_dict(model, state)
    msg = str(err.value)
    # Many R50 keys are unexpected or differently shaped; the small model's plain (non-deformable) position head and
    # GroupNorm backbone also have keys the R50 file lacks.
    assert re.search(r"\d+ unexpected keys", msg) and re.search(r"\d+ wrongly shaped", msg)
    assert re.search(r"\d+ missing keys", msg) and "... and" in msg
    assert len(msg.splitlines()) < 80


# ----------------------------------------------------------------------------------------------- unsafe / unreadable
def test_pickled_module_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Conv2d(3, 4, 1), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "arbitrary unpickling" in msg and "would run code" in msg
    assert "weights_only" not in msg  # never the advice to switch the protection off
    assert "torch.nn.modules.conv.Conv2d" in msg  # names what the file would import


def test_custom_class_in_checkpoint_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": NotAWeight()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    assert "arbitrary unpickling" in str(err.value) and "NotAWeight" in str(err.value)


class RunsCommand:
    """What a malicious checkpoint holds: unpickling it calls ``function(argument)``."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _marker_command(marker: Path) -> str:
    return f"{sys.executable} -c \"open({str(marker)!r}, 'w').write('ran')\""


@pytest.mark.parametrize("function, legacy", [(os.system, False), (os.system, True), (exec, False)],
                         ids=["os.system", "os.system-legacy-format", "builtins.exec"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, function, legacy):
    """A .pth whose pickle would run a command: refused, nothing runs, and the message says why without advising
    to switch the protection off (torch's own message suggests weights_only=False)."""
    marker = tmp_path / "ran.txt"
    argument = _marker_command(marker) if function is os.system else f"open({str(marker)!r}, 'w').write('ran')"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": RunsCommand(function, argument)}, path,
               _use_new_zipfile_serialization=not legacy)
    # The file is really malicious: an unprotected unpickler runs it (proven on a copy, then the marker removed).
    if function is os.system:
        with open(path, "rb") as f:
            torch.load(f, weights_only=False)
        assert marker.read_text() == "ran"
        marker.unlink()
    with pytest.raises(CheckpointError, match="refused: loading this file would run code"):
        load_checkpoint_file(path, mmap=True)  # mapping the tensors keeps the weights-only unpickler
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused: loading this file would run code")
    assert ("system" if function is os.system else "exec") in msg  # names what it would call
    assert "weights_only" not in msg and "will likely succeed" not in msg
    assert "not a PyTorch checkpoint" not in msg
    assert not marker.exists(), "loading the malicious checkpoint ran its command"


def test_torch_unpickler_wordings_are_recognised():
    """The refusal texts of torch 2.11-2.14's weights-only unpickler (torch/_weights_only_unpickler.py) that mean
    "this file would import or call code", as torch.load wraps them."""
    from pfcn.checkpoint import _refers_to_code, _unpickler_reason

    advice = ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
              "... Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can result "
              "in arbitrary code execution.")
    cases = {
        "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.": "posix.system",
        "Unsupported global: GLOBAL subprocess2.run was not an allowed global by default. Please use ...":
            "subprocess2.run",
        "Trying to call reduce for unrecognized function <built-in function system> which belongs to <module>":
            "<built-in function system>",
    }
    for text, target in cases.items():
        assert _refers_to_code(f"{advice}\n\n\n{text}\n\nCheck the documentation of torch.load") == target
    assert _refers_to_code(f"{advice}\nWeightsUnpickler error: \n\nUnsupported operand 149\n") is None
    assert _unpickler_reason(f"{advice}\nWeightsUnpickler error: \n\nUnsupported operand 149\n") == \
        "Unsupported operand 149"
    assert "weights_only" not in _unpickler_reason(f"{advice}\n\nCheck the documentation of torch.load")


@pytest.mark.parametrize("content", [b"\x00\x01garbage\xff" * 20, b"hello, I am a text file\n", b"",
                                     b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64],
                         ids=["garbage", "text", "empty", "jpeg_header"])
def test_non_checkpoint_file_gives_clear_error(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "checkpoint" in msg
    assert "arbitrary unpickling" not in msg, "a corrupt file is not an unsafe one"


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint_file(tmp_path / "absent.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_checkpoint_file(tmp_path / "tensor.pth")
    torch.save({"model": {"a": 1, "b": torch.zeros(1)}}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match=r"not tensors: \['a'\]"):
        load_checkpoint_file(tmp_path / "ints.pth")


# ----------------------------------------------------------------------------------------------- saving
def test_save_load_round_trip_with_meta_and_cfg(small, tmp_path):
    model, cfg = small
    meta = CategoryMeta.from_categories(
        [{"id": 11, "name": "cup", "isthing": 1, "color": [1, 2, 3]}, {"id": 12, "name": "pen", "isthing": 1},
         {"id": 13, "name": "ant", "isthing": 1}, {"id": 14, "name": "box", "isthing": 1},
         {"id": 40, "name": "sky", "isthing": 0}, {"id": 41, "name": "sea", "isthing": 0},
         {"id": 42, "name": "mud", "isthing": 0}])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / "sub" / "model_final.pth"
    save_checkpoint(path, model, meta=meta, cfg_yaml=cfg_to_yaml(cfg), iteration=1234)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_final.pth"], "temporary file left behind"

    torch.manual_seed(99)
    other, _ = build("PanopticFCN-Small.yaml")
    ckpt = load_weights(other, path)
    a, b = model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint_meta(ckpt) == meta
    assert ckpt["iteration"] == 1234
    cfg_file = tmp_path / "from_ckpt.yaml"
    cfg_file.write_text(ckpt["cfg"])
    assert cfg_to_yaml(load_config(cfg_file)) == cfg_to_yaml(cfg)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_mapped_load_reads_the_same_checkpoint(small, tmp_path, legacy):
    """``mmap=True`` (used to read a stored config without loading the weights) returns what a full load returns,
    for torch.save's zip format (mapped) and the legacy format (read)."""
    model, cfg = small
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "cfg": cfg_to_yaml(cfg), "iteration": 7}, path,
               _use_new_zipfile_serialization=not legacy)
    full, mapped = load_checkpoint_file(path), load_checkpoint_file(path, mmap=True)
    assert mapped["cfg"] == full["cfg"] and mapped["iteration"] == 7
    assert mapped["model"].keys() == full["model"].keys()
    assert all(torch.equal(mapped["model"][k], full["model"][k]) for k in full["model"])


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(small, tmp_path):
    model, _ = small
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, iteration=1)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, model, iteration=2, hook=lambda x: x)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    save_checkpoint(path, model, iteration=3)  # overwriting works and is complete
    assert load_checkpoint_file(path)["iteration"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


_WRITE_LIMITED = """
import resource, signal, sys
import torch
from pfcn.checkpoint import CheckpointWriteError, atomic_torch_save

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    atomic_torch_save({"model": {"w": torch.zeros(1 << 20)}}, sys.argv[1])
except CheckpointWriteError as e:
    print(f"{type(e).__name__}|{isinstance(e, OSError)}|{e}")
"""


def test_write_failure_names_the_file_and_cleans_up(tmp_path):
    """A real failed write (file-size limit, as on a full disk): an OSError naming the path, no temporary file,
    and the previous checkpoint at that path unchanged."""
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"previous")
    proc = subprocess.run([sys.executable, "-c", _WRITE_LIMITED, str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kind, is_os_error, message = proc.stdout.strip().split("|", 2)
    assert kind == "CheckpointWriteError" and is_os_error == "True"
    assert message.startswith(f"{path}: cannot write the checkpoint: ") and "\n" not in message
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model_final.pth"]


def test_folder_that_is_a_file_is_a_write_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(CheckpointWriteError, match="taken/ckpt.pth: cannot write the checkpoint"):
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "taken" / "ckpt.pth")


# ----------------------------------------------------------------------------------------------- Star variant
def test_star_config_builds_deformable_256d_encoder(key_list):
    entries, _ = key_list
    model, cfg = build("PanopticFCN-Star-R50-3x.yaml", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = "feature_encoder.encode_head.encode_head_head_"
    expected = {}
    for i, cin in ((1, 258), (2, 256), (3, 256)):  # 256-d semantic FPN + 2 coord channels, then 256-d
        expected[f"{prefix}{i}.offset_mask_conv.weight"] = (27, cin, 3, 3)  # 3 x 3x3 (offset x, y, mask)
        expected[f"{prefix}{i}.offset_mask_conv.bias"] = (27,)
        expected[f"{prefix}{i}.dcnv2.weight"] = (256, cin, 3, 3)
        expected[f"{prefix}{i}.dcnv2.bias"] = (256,)
    for gen in ("thing_generator", "stuff_generator"):
        expected[f"{gen}.embed_extractor.weight"] = (256, 256, 1, 1)
        expected[f"{gen}.embed_extractor.bias"] = (256,)
    changed = {k: v for k, v in own.items() if k.startswith(("feature_encoder.", "thing_generator.",
                                                               "stuff_generator."))}
    assert changed == expected
    # Everything else is the R50 layout.
    rest = {k: v for k, v in own.items() if k not in changed}
    official_rest = {k: e[0] for k, e in entries.items() if not k.startswith(("feature_encoder.", "thing_generator.",
                                                                                "stuff_generator."))}
    assert rest == official_rest

    calls = []
    hook = model.feature_encoder.encode_head.encode_head_head_1.offset_mask_conv.register_forward_hook(
        lambda m, i, o: calls.append(tuple(o.shape)))
    image = torch.randint(0, 256, (1, 3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(image)
    hook.remove()
    assert calls and calls[0][1] == 27, "the deformable encoder's offsets were not computed"
    assert model.forward_features(torch.zeros(1, 3, 64, 96)).encoded.shape[1] == 256
    assert out["panoptic"].shape == (1, 60, 90)
    assert out["instance_masks"].shape == (1, cfg.MODEL.POSITION_HEAD.THING.TOP_NUM, 60, 90)
