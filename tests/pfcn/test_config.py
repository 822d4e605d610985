"""Tests for pfcn/config.py: official defaults, official YAML files, our configs/, and loader errors.

The official sources are read from the clones named by PFCN_OFFICIAL_REPO (yanwei-li/PanopticFCN) and
PFCN_DETECTRON2_REPO (facebookresearch/detectron2); tests that need them skip, saying so, when a variable is unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from yacs.config import CfgNode

from pfcn.config import ConfigError, cfg_to_yaml, config_hash, get_cfg, load_config, merge_overrides

from .training.official_code import DETECTRON2_ENV, OFFICIAL_ENV, SourcesNotConfigured, read_source

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

CONFIG_NAMES = [
    f"PanopticFCN-{variant}{fast}"
    for variant in ("R50-1x", "R50-3x", "R50-400-3x", "R50-512-3x", "R50-600-3x", "Star-R50-3x")
    for fast in ("", "-FAST")
]

# What each official config changes relative to PanopticFCN-R50-1x (model.md: schedule, input sizes, POS_NUM,
# Star feature encoder, FAST thresholds) -- and nothing else.
_3X = {"SOLVER.MAX_ITER": 270000}
_FAST = {"MODEL.POSITION_HEAD.THING.THRES": 0.2, "MODEL.POSITION_HEAD.STUFF.THRES": 0.1}
_SIZES_400 = {
    "INPUT.MIN_SIZE_TRAIN": (352, 384, 416, 448, 480, 512), "INPUT.MAX_SIZE_TRAIN": 854,
    "INPUT.MIN_SIZE_TEST": 400, "INPUT.MAX_SIZE_TEST": 666, "MODEL.POSITION_HEAD.THING.POS_NUM": 3,
}
_SIZES_512 = {**_SIZES_400, "INPUT.MIN_SIZE_TEST": 512, "INPUT.MAX_SIZE_TEST": 854}
_SIZES_600 = {
    "INPUT.MIN_SIZE_TRAIN": (440, 472, 504, 536, 568, 600), "INPUT.MAX_SIZE_TRAIN": 1000,
    "INPUT.MIN_SIZE_TEST": 600, "INPUT.MAX_SIZE_TEST": 1000, "MODEL.POSITION_HEAD.THING.POS_NUM": 5,
}
_STAR = {"MODEL.FEATURE_ENCODER.DEFORM": True, "MODEL.FEATURE_ENCODER.CONVS_DIM": 256}
EXPECTED_DIFF_FROM_R50_1X: dict[str, dict[str, Any]] = {
    "PanopticFCN-R50-1x": {},
    "PanopticFCN-R50-1x-FAST": _FAST,
    "PanopticFCN-R50-3x": _3X,
    "PanopticFCN-R50-3x-FAST": {**_3X, **_FAST},
    "PanopticFCN-R50-400-3x": {**_3X, **_SIZES_400},
    "PanopticFCN-R50-400-3x-FAST": {**_3X, **_SIZES_400, **_FAST},
    "PanopticFCN-R50-512-3x": {**_3X, **_SIZES_512},
    "PanopticFCN-R50-512-3x-FAST": {**_3X, **_SIZES_512, **_FAST},
    "PanopticFCN-R50-600-3x": {**_3X, **_SIZES_600},
    "PanopticFCN-R50-600-3x-FAST": {**_3X, **_SIZES_600, **_FAST},
    "PanopticFCN-Star-R50-3x": {**_3X, **_STAR},
    "PanopticFCN-Star-R50-3x-FAST": {**_3X, **_STAR, **_FAST},
}


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _source(env_var: str, path: str) -> str:
    try:
        return read_source(env_var, path)
    except SourcesNotConfigured as err:
        pytest.skip(str(err))


def _official_yaml(name: str, tmp_path: Path) -> Path:
    """Write the official config file, byte for byte, into tmp_path (the loader takes paths)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(_source(OFFICIAL_ENV, f"configs/{name}.yaml"))
    return path


def _official_defaults() -> CfgNode:
    """The config the official train.py starts from: detectron2 defaults, then add_panopticfcn_config.

    Built by running the two official source files against yacs' CfgNode (both only need ``CN``), so our
    hand-written defaults are checked against the sources rather than against themselves.
    """
    pfcn_src = _source(OFFICIAL_ENV, "panopticfcn/config.py")
    d2_src = _source(DETECTRON2_ENV, "detectron2/config/defaults.py")
    d2_ns: dict[str, Any] = {"CN": CfgNode}
    exec(compile(d2_src.replace("from .config import CfgNode as CN", ""), "defaults.py", "exec"), d2_ns)
    pfcn_ns: dict[str, Any] = {"CN": CfgNode}
    pfcn_src = pfcn_src.replace("from detectron2.config import CfgNode as CN", "")
    exec(compile(pfcn_src, "config.py", "exec"), pfcn_ns)
    cfg = d2_ns["_C"].clone()
    pfcn_ns["add_panopticfcn_config"](cfg)
    return cfg


def _flatten(node: CfgNode, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _structure(value: Any) -> Any:
    """A value together with its container/scalar types, so (1, 2) and [1, 2] or 1 and 1.0 compare unequal."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_structure(v) for v in value])
    return (type(value).__name__, value)


def _assert_same_cfg(ours: CfgNode, ref: CfgNode) -> None:
    flat_ours, flat_ref = dict(_flatten(ours)), dict(_flatten(ref))
    assert sorted(flat_ours) == sorted(flat_ref), set(flat_ours) ^ set(flat_ref)
    mismatched = {
        k: (flat_ours[k], flat_ref[k]) for k in flat_ref if _structure(flat_ours[k]) != _structure(flat_ref[k])
    }
    assert not mismatched


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------------------
def test_defaults_equal_official_sources() -> None:
    _assert_same_cfg(get_cfg(), _official_defaults())


def test_defaults_spot_checks() -> None:
    cfg = get_cfg()
    assert cfg.VERSION == 2
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.POSITION_HEAD.THING.POS_NUM == 7
    assert cfg.MODEL.POSITION_HEAD.THING.TOP_NUM == 100
    assert cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES == 80
    assert cfg.MODEL.POSITION_HEAD.THING.BIAS_VALUE == -2.19
    assert cfg.MODEL.POSITION_HEAD.THING.THRES == 0.05
    assert cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES == 54
    assert cfg.MODEL.POSITION_HEAD.STUFF.THRES == 0.05
    assert cfg.MODEL.INFERENCE.INST_THRES == 0.4
    assert cfg.MODEL.INFERENCE.SIMILAR_THRES == 0.9
    assert cfg.MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT == 4096
    assert cfg.MODEL.INFERENCE.COMBINE.OVERLAP_THRESH == 0.5
    assert cfg.MODEL.INFERENCE.COMBINE.INST_THRESH == 0.2
    assert cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES == ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))
    assert cfg.MODEL.FEATURE_ENCODER.CONVS_DIM == 64 and cfg.MODEL.FEATURE_ENCODER.DEFORM is False
    assert cfg.MODEL.FEATURE_ENCODER.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    assert cfg.MODEL.SEMANTIC_FPN.NORM == "GN" and cfg.MODEL.SEMANTIC_FPN.COMMON_STRIDE == 4
    assert cfg.SOLVER.MOMENTUM == 0.9
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert cfg.SOLVER.POLY_LR_POWER == 0.9 and cfg.SOLVER.POLY_LR_CONSTANT_ENDING == 0.0
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.FPN.OUT_CHANNELS == 256 and cfg.MODEL.FPN.FUSE_TYPE == "sum"
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.MODEL.IGNORE_VALUE == 255 and cfg.MODEL.TENSOR_DIM == 100
    # add_panopticfcn_config replaces detectron2's SEM_SEG_HEAD node with a two-key one.
    assert sorted(cfg.MODEL.SEM_SEG_HEAD) == ["IGNORE_VALUE", "NUM_CLASSES"]


def test_get_cfg_returns_independent_mutable_copies() -> None:
    first = get_cfg()
    first.MODEL.POSITION_HEAD.THING.POS_NUM = 1
    assert get_cfg().MODEL.POSITION_HEAD.THING.POS_NUM == 7
    assert not get_cfg().is_frozen()


# ---------------------------------------------------------------------------------------------------------------
# Official YAML files and configs/
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_official_yaml_loads_unchanged(name: str, tmp_path: Path) -> None:
    path = _official_yaml(name, tmp_path)
    cfg = load_config(path)
    assert cfg.is_frozen()
    # Same result as yacs' own merge (the semantics detectron2's CfgNode inherits) on the official defaults.
    ref = _official_defaults()
    ref.merge_from_file(str(path))
    _assert_same_cfg(cfg, ref)
    # detectron2 writes tuples as strings "(640, ...)" and 1e-4 (a YAML string): both must be decoded.
    assert isinstance(cfg.INPUT.MIN_SIZE_TRAIN, tuple) and all(type(s) is int for s in cfg.INPUT.MIN_SIZE_TRAIN)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic_separated",)
    assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic_separated",)
    assert type(cfg.SOLVER.WEIGHT_DECAY) is float and cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFCN"
    assert all(type(s) is tuple for s in cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_our_config_equals_official(name: str, tmp_path: Path) -> None:
    official = load_config(_official_yaml(name, tmp_path), freeze=False)
    ours = load_config(CONFIG_DIR / f"{name}.yaml", freeze=False)
    assert ours.MODEL.WEIGHTS == ""  # weights come from --weights, never from a machine-specific path
    official.MODEL.WEIGHTS = ""
    _assert_same_cfg(ours, official)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_differences_are_those_of_model_md(name: str) -> None:
    reference = dict(_flatten(load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml")))
    flat = dict(_flatten(load_config(CONFIG_DIR / f"{name}.yaml")))
    diff = {k: v for k, v in flat.items() if _structure(v) != _structure(reference[k])}
    assert diff == EXPECTED_DIFF_FROM_R50_1X[name]


def test_r50_1x_values() -> None:
    cfg = load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml")
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.MAX_ITER == 90000 and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and cfg.SOLVER.WARMUP_FACTOR == 0.001
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED is True and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 35.0
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "value"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800) and cfg.INPUT.MASK_FORMAT == "bitmask"


PFCN_ONLY_CONFIGS = ["PanopticFCN-Small"]  # pfcn's own CPU configuration, not an official one


def test_configs_dir_holds_the_official_set() -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == sorted(CONFIG_NAMES + ["Base-PanopticFCN"] + PFCN_ONLY_CONFIGS)


# ---------------------------------------------------------------------------------------------------------------
# Overrides and decoding
# ---------------------------------------------------------------------------------------------------------------
def test_overrides_are_literal_evaluated() -> None:
    cfg = load_config(
        CONFIG_DIR / "PanopticFCN-R50-3x.yaml",
        [
            "MODEL.POSITION_HEAD.THING.THRES", "0.3",
            "INPUT.MIN_SIZE_TRAIN", "(512,)",
            "INPUT.MIN_SIZE_TEST", "512",
            "MODEL.WEIGHTS", "/tmp/model_final.pth",
            "MODEL.DEVICE", "cpu",
            "MODEL.KERNEL_HEAD.INSTANCE_SCALES", "[[1, 32], [16, 4096]]",
            "DATASETS.TEST", "['my_val']",
            "OUTPUT_DIR", "2024",
            "MODEL.INFERENCE.COMBINE.OVERLAP_THRESH", "1",
            "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
        ],
    )
    assert cfg.MODEL.POSITION_HEAD.THING.THRES == 0.3
    assert cfg.INPUT.MIN_SIZE_TRAIN == (512,)
    assert cfg.INPUT.MIN_SIZE_TEST == 512
    assert cfg.MODEL.WEIGHTS == "/tmp/model_final.pth"
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES == ((1, 32), (16, 4096))
    assert all(type(s) is tuple for s in cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES)
    assert cfg.DATASETS.TEST == ("my_val",)
    assert cfg.OUTPUT_DIR == "2024"  # a string key keeps a number-like string
    assert type(cfg.MODEL.INFERENCE.COMBINE.OVERLAP_THRESH) is float  # int widened for a float key
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0  # a None default accepts a value
    assert cfg.SOLVER.MAX_ITER == 270000  # untouched keys keep the file's value


def test_overrides_accept_python_values_and_return_cfg() -> None:
    cfg = get_cfg()
    assert merge_overrides(cfg, ["SOLVER.MAX_ITER", 10, "INPUT.MIN_SIZE_TRAIN", [400, 500]]) is cfg
    assert cfg.SOLVER.MAX_ITER == 10 and cfg.INPUT.MIN_SIZE_TRAIN == (400, 500)


def test_odd_number_of_override_tokens() -> None:
    with pytest.raises(ConfigError, match="KEY VALUE pairs.*'SOLVER.MAX_ITER' has no value"):
        load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER"])


def test_frozen_configs() -> None:
    cfg = load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml")
    with pytest.raises(AttributeError):
        cfg.SOLVER.MAX_ITER = 1
    with pytest.raises(ConfigError, match="frozen"):
        merge_overrides(cfg, ["SOLVER.MAX_ITER", "1"])
    mutable = load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", freeze=False)
    mutable.SOLVER.MAX_ITER = 1
    assert mutable.SOLVER.MAX_ITER == 1


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "typo.yaml", "MODEL:\n  POSITION_HEAD:\n    THING:\n      THRESH: 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'MODEL.POSITION_HEAD.THING.THRESH'" in message
    assert "did you mean 'MODEL.POSITION_HEAD.THING.THRES'" in message
    assert str(path) in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_unknown_group_in_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "typo.yaml", "MODEL:\n  POSITON_HEAD:\n    NUM_CONVS: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.POSITON_HEAD'.*'MODEL.POSITION_HEAD'"):
        load_config(path)


def test_unknown_key_in_overrides() -> None:
    with pytest.raises(ConfigError, match=r"overrides: unknown config key 'SOLVER.BASE_LRR'.*'SOLVER.BASE_LR'"):
        load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", ["SOLVER.BASE_LRR", "0.02"])
    # A leaf name without its group still gets pointed at the full key.
    with pytest.raises(ConfigError, match=r"'POS_NUM'.*'MODEL.POSITION_HEAD.THING.POS_NUM'"):
        load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", ["POS_NUM", "3"])
    with pytest.raises(ConfigError, match=r"'MODEL.NOPE.DEPTH'"):
        load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", ["MODEL.NOPE.DEPTH", "3"])


def test_type_mismatch_in_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", "SOLVER:\n  MAX_ITER: lots\n")
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITER expects type int \(currently 40000\); got 'lots' \(str\)"):
        load_config(path)
    path = _write(tmp_path / "bad_item.yaml", "INPUT:\n  MIN_SIZE_TRAIN: [640, big]\n")
    with pytest.raises(ConfigError, match=r"INPUT.MIN_SIZE_TRAIN\[1\] must be of kind number.*'big'"):
        load_config(path)
    path = _write(tmp_path / "bad_group.yaml", "MODEL:\n  RESNETS: 50\n")
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS is a group of keys.*got 50"):
        load_config(path)
    path = _write(tmp_path / "bad_leaf.yaml", "MODEL:\n  WEIGHTS: {path: x}\n")
    with pytest.raises(ConfigError, match=r"MODEL.WEIGHTS is a single value"):
        load_config(path)


def test_type_mismatch_in_overrides() -> None:
    base = CONFIG_DIR / "PanopticFCN-R50-1x.yaml"
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.DEPTH expects type int.*got '50.5' \(float\)"):
        load_config(base, ["MODEL.RESNETS.DEPTH", "50.5"])
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.STRIDE_IN_1X1 expects type bool.*got '1' \(int\)"):
        load_config(base, ["MODEL.RESNETS.STRIDE_IN_1X1", "1"])
    with pytest.raises(ConfigError, match=r"MODEL.KERNEL_HEAD.INSTANCE_SCALES\[0\] must be of kind sequence"):
        load_config(base, ["MODEL.KERNEL_HEAD.INSTANCE_SCALES", "(1, 64)"])
    with pytest.raises(ConfigError, match=r"MODEL.FPN is a group of keys"):
        load_config(base, ["MODEL.FPN", "256"])
    with pytest.raises(ConfigError, match=r"MODEL.DEVICE is a single value"):
        load_config(base, ["MODEL.DEVICE.TYPE", "cpu"])


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_config(missing)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(_write(tmp_path / "broken.yaml", "MODEL: [unclosed\n"))
    with pytest.raises(ConfigError, match="list.yaml: a config file must hold a mapping"):
        load_config(_write(tmp_path / "list.yaml", "- MODEL\n"))


def test_unsupported_version(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VERSION 1 is not supported"):
        load_config(_write(tmp_path / "v1.yaml", "VERSION: 1\n"))


# ---------------------------------------------------------------------------------------------------------------
# _BASE_ inheritance
# ---------------------------------------------------------------------------------------------------------------
def test_base_relative_to_including_file(tmp_path: Path) -> None:
    _write(tmp_path / "bases" / "root.yaml", "SOLVER:\n  MAX_ITER: 11\n  BASE_LR: 0.5\nINPUT:\n  MIN_SIZE_TEST: 300\n")
    _write(tmp_path / "bases" / "mid.yaml", "_BASE_: root.yaml\nSOLVER:\n  MAX_ITER: 22\n")
    _write(tmp_path / "other.yaml", "INPUT:\n  MIN_SIZE_TEST: 400\n  MAX_SIZE_TEST: 500\n")
    leaf = _write(
        tmp_path / "exp" / "leaf.yaml",
        "_BASE_: ['../bases/mid.yaml', '../other.yaml']\nINPUT:\n  MAX_SIZE_TEST: 600\n",
    )
    cfg = load_config(leaf)
    assert cfg.SOLVER.MAX_ITER == 22  # mid overrides root
    assert cfg.SOLVER.BASE_LR == 0.5  # inherited from root through mid
    assert cfg.INPUT.MIN_SIZE_TEST == 400  # later base wins over earlier
    assert cfg.INPUT.MAX_SIZE_TEST == 600  # the file itself wins over its bases


def test_base_absolute_path(tmp_path: Path) -> None:
    base = _write(tmp_path / "a" / "base.yaml", "SOLVER:\n  MAX_ITER: 7\n")
    leaf = _write(tmp_path / "b" / "leaf.yaml", f"_BASE_: {base}\n")
    assert load_config(leaf).SOLVER.MAX_ITER == 7


def test_base_missing_and_cycle(tmp_path: Path) -> None:
    leaf = _write(tmp_path / "leaf.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"leaf.yaml: _BASE_ file not found: .*gone.yaml"):
        load_config(leaf)
    _write(tmp_path / "x.yaml", "_BASE_: y.yaml\n")
    _write(tmp_path / "y.yaml", "_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "x.yaml")


def test_base_key_not_allowed_in_overrides() -> None:
    with pytest.raises(ConfigError, match="'_BASE_'"):
        load_config(CONFIG_DIR / "PanopticFCN-R50-1x.yaml", ["_BASE_", "other.yaml"])


# ---------------------------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["PanopticFCN-R50-400-3x-FAST", "PanopticFCN-Star-R50-3x"])
def test_yaml_dump_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml", ["MODEL.WEIGHTS", "w.pth", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"])
    text = cfg_to_yaml(cfg)
    assert "&id" not in text and "!!python" not in text  # plain, safe YAML
    yaml.safe_load(text)
    reloaded = load_config(_write(tmp_path / "dump.yaml", text))
    _assert_same_cfg(reloaded, cfg)
    assert config_hash(reloaded) == config_hash(cfg)


def test_config_hash_identifies_values() -> None:
    fast = load_config(CONFIG_DIR / "PanopticFCN-R50-3x-FAST.yaml")
    plain = load_config(CONFIG_DIR / "PanopticFCN-R50-3x.yaml")
    as_fast = load_config(
        CONFIG_DIR / "PanopticFCN-R50-3x.yaml",
        ["MODEL.POSITION_HEAD.THING.THRES", "0.2", "MODEL.POSITION_HEAD.STUFF.THRES", "0.1"],
    )
    digest = config_hash(fast)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert config_hash(as_fast) == digest
    assert config_hash(plain) != digest
