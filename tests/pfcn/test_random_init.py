"""Calibrated random weights: the exact logit-spread shortcut, the calibration target, and bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pfcn.config import load_config
from pfcn.model import build_model
from pfcn.random_init import _logit_std, calibrate_random_model

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "configs" / "PanopticFCN-Small.yaml"


def test_logit_std_equals_the_std_of_the_full_logit_matrix():
    gen = torch.Generator().manual_seed(0)
    embedded = torch.randn(2, 37, 8, generator=gen, dtype=torch.float64)
    features = torch.rand(2, 8, 53, generator=gen, dtype=torch.float64) + 0.5  # a common component, as after ReLU
    full = torch.matmul(embedded, features).std().item()
    fast = _logit_std(embedded, features @ features.transpose(1, 2), features.sum(dim=2), features.shape[2])
    assert abs(fast - full) <= 1e-9 * full


@pytest.mark.parametrize("config", ["PanopticFCN-Small.yaml", "PanopticFCN-R50-1x.yaml"])
def test_calibrated_mask_logits_spread_as_requested(config):
    """Recomputed with the final weights, the mask logits have the requested spread: the calibration's own pass
    (frozen BN statistics set on the way, R50) saw the same network outputs."""
    cfg = load_config(REPO / "configs" / config, ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128",
                                                  "INPUT.MAX_SIZE_TEST", "192"])
    torch.manual_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), rng.integers(0, 256, (128, 80, 3), dtype=np.uint8)]
    calibrate_random_model(model, images, mask_logit_std=3.0, progress=False)
    from pfcn.random_init import _network_batch

    with torch.no_grad():
        heads = model.forward_features(_network_batch(model, images))
        kernels = heads.weights[0].flatten(2).transpose(1, 2)
        enc = heads.encoded.flatten(2)
        for generator in (model.thing_generator, model.stuff_generator):
            logits = torch.matmul(generator(kernels), enc)
            assert abs(logits.std().item() - 3.0) < 1e-3
            assert abs(logits.mean().item()) < 1.5  # around zero: masks neither all on nor all off


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    from pfcn.config import load_config
    from pfcn.model import build_model
    from pfcn.random_init import calibrate_random_model

    size = int(sys.argv[2])
    cfg = load_config(sys.argv[1], ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(size),
                                    "INPUT.MAX_SIZE_TEST", str(size)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    with torch.no_grad():  # one plain inference of the batch: the baseline the calibration may not exceed by much
        model.forward_features(torch.zeros(2, 3, size, size))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    calibrate_random_model(model, images, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024 if sys.platform != "darwin" else after - before)
""")


def test_calibration_peak_memory_stays_near_one_inference():
    """At 512x512 the small config's [P3 kernels x pixels] logit matrix alone is 0.5 GB for two images (the
    former calibration grew the peak by about 1 GB here); calibration must add little to a plain inference."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(SMALL), "512"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth = int(proc.stdout.strip().splitlines()[-1])
    assert growth < 250 * 2**20, f"calibration raised the peak RSS by {growth / 2**20:.0f} MB"
