"""Static ONNX export: the graphs run in ONNX Runtime and give what PyTorch eager gives.

Exports a calibrated random-weight Small model (fixed and dynamic, e2e and network) and an R50 (at a reduced test
size to keep CI fast), checks every graph with ``--check``, and compares ONNX Runtime with eager PyTorch on synthetic
images and on the two real COCO photos.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from pfcn.config import load_config
from pfcn.export.check import check_onnx
from pfcn.contract import NETWORK_OUTPUTS, OUTPUT_SETS
from pfcn.export.onnx_export import ExportError, export_onnx, read_metadata
from pfcn.export.symbolics import register_symbolics
from pfcn.inference import fuse_thing_kernels, stuff_kernels, thing_candidates
from pfcn.predictor import default_meta, to_canvas
from pfcn.runtime.compare import result_agreement, tensor_errors
from pfcn.runtime import open_model, predict
from pfcn.runtime.backend import canvas_for
from pfcn.runtime.ort import OrtBackend
from pfcn.result import results_from_outputs

from ..pfcn.parity import R50_CONFIG, SMALL_CONFIG, calibrated_model, mask_iou, sample_images, synthetic_image

def assert_outputs_close(ref: dict, out: dict, label: str, sizes=None, meta=None) -> None:
    """The graph's outputs equal eager's up to float noise.

    Near-equal instance scores may swap two slots between backends, so instances are matched by class, score and
    mask IoU, and panoptic maps by segment matching; the semantic map and validity counts must agree elementwise.
    """
    ref = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in ref.items()}
    errors = tensor_errors(ref, out)
    # argmax over near-tied stuff probabilities of a random-weight model may flip a few pixels with float noise
    assert errors["semantic"]["mismatch"] <= 5e-3, f"{label}: semantic {errors['semantic']}"
    for b in range(ref["panoptic"].shape[0]):
        rv, ov = ref["instance_valid"][b], out["instance_valid"][b]
        assert abs(int(rv.sum()) - int(ov.sum())) <= 1, f"{label}: {rv.sum()} vs {ov.sum()} instances"
        assert ref["segment_valid"][b].sum() == out["segment_valid"][b].sum(), f"{label}: segment count"
        used = set()
        # an instance scored at a cut-off (the 0.05 floor, or the last of the top-100) may fall on either side of it
        cut = min(ref["instance_scores"][b][rv].min(initial=1.0), out["instance_scores"][b][ov].min(initial=1.0))
        for i in np.flatnonzero(rv):
            if ref["instance_scores"][b][i] <= max(cut, 0.05) + 1e-3:
                continue
            cands = [j for j in np.flatnonzero(ov) if j not in used
                     and out["instance_classes"][b][j] == ref["instance_classes"][b][i]
                     and abs(out["instance_scores"][b][j] - ref["instance_scores"][b][i]) < 1e-3]
            best = max(cands, key=lambda j: mask_iou(ref["instance_masks"][b][i], out["instance_masks"][b][j]),
                       default=None)
            assert best is not None, f"{label}: image {b} instance {i} has no counterpart"
            assert mask_iou(ref["instance_masks"][b][i], out["instance_masks"][b][best]) >= 0.99, f"{label}: mask {i}"
            used.add(best)
        if meta is not None:
            h, w = sizes[b]
            a = results_from_outputs({k: v[b:b + 1] for k, v in ref.items()}, [(h, w)], meta)[0]
            o = results_from_outputs({k: v[b:b + 1] for k, v in out.items()}, [(h, w)], meta)[0]
            agreement = result_agreement(a, o)
            assert agreement.pixel_agreement >= 0.999 and agreement.unmatched_a == agreement.unmatched_b == 0, \
                f"{label}: {agreement}"
            assert agreement.category_mismatch == 0, f"{label}: {agreement}"


@pytest.fixture(scope="module")
def small():
    images = [synthetic_image(150, 210, 1), synthetic_image(150, 210, 2)]
    # the deformable position head (as in every official config) so that DeformConv is exported and checked
    model, cfg = calibrated_model(SMALL_CONFIG, 0, images, ["MODEL.POSITION_HEAD.DEFORM", "True",
                                                            "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384"])
    return model, cfg, default_meta(cfg)


@pytest.fixture(scope="module")
def small_fixed(small, tmp_path_factory):
    model, cfg, meta = small
    return export_onnx(model, cfg, meta, tmp_path_factory.mktemp("onnx") / "fixed.onnx", input_size=(150, 210), batch=2)


@pytest.fixture(scope="module")
def small_dynamic(small, tmp_path_factory):
    model, cfg, meta = small
    return export_onnx(model, cfg, meta, tmp_path_factory.mktemp("onnx") / "dyn.onnx", dynamic=(32, 32, 640, 640),
                       dynamic_batch=True)


def run_eager(model, canvas, sizes, net=None):
    with torch.no_grad():
        return model(torch.from_numpy(canvas), torch.from_numpy(sizes), net)


def test_fixed_graph_matches_eager(small, small_fixed):
    model, _, meta = small
    backend = open_model(small_fixed)
    assert isinstance(backend, OrtBackend)
    assert backend.info.fixed_hw == (150, 210) and backend.info.batch == 2
    images = [synthetic_image(150, 210, 5), synthetic_image(150, 210, 6)]
    canvas, sizes = (t.numpy() for t in to_canvas(images))
    assert_outputs_close(run_eager(model, canvas, sizes), backend.run(canvas, sizes), "fixed", sizes.tolist(), meta)
    # a smaller image fits the canvas: same inputs -> same outputs as eager on that canvas
    small_img = synthetic_image(120, 180, 7)
    canvas, sizes = canvas_for(backend, [small_img], ["small"])
    assert canvas.shape == (2, 3, 150, 210)  # the fixed batch is filled
    assert_outputs_close(run_eager(model, canvas, sizes, backend.info.net_size), backend.run(canvas, sizes), "fits",
                         sizes.tolist(), meta)


def test_fixed_graph_rejects_image_that_does_not_fit(small_fixed):
    backend = open_model(small_fixed)
    with pytest.raises(ValueError, match="tall.jpg: image 200x100 does not fit"):
        predict(backend, [synthetic_image(200, 100, 1)], file_names=["tall.jpg"])


def test_check_reports_no_unsupported_op(small_fixed, small_dynamic):
    for path in (small_fixed, small_dynamic):
        report = check_onnx(path)
        assert report.ok, report.to_text()
        ops = {r.op for r in report.ops}
        assert "DeformConv" in ops and "TopK" in ops
        assert not ops & {"NonZero", "Unique", "Loop"}
        assert "pfcn::PanopticMerge" in ops  # the merge is a local function a plugin can replace
        assert [f.name for f in onnx.load(str(path)).functions] == ["PanopticMerge"]
        assert report.min_trt == (10, 1)  # DeformConv is parsed from TensorRT 10.1
        assert not report.warnings, report.warnings  # e.g. no duplicated large constants, no float64


def test_dynamic_graph_other_sizes_and_batches(small, small_dynamic):
    """A dynamic-size export keeps parity at sizes other than the export size; batch 2 = batch 1 per image."""
    model, _, meta = small
    backend = open_model(small_dynamic)
    assert backend.info.fixed_hw is None and backend.info.batch is None
    for h, w, seed in ((97, 301, 2), (400, 120, 3), (33, 45, 4)):
        image = synthetic_image(h, w, seed)
        canvas, sizes = (t.numpy() for t in to_canvas([image]))
        ref = run_eager(model, canvas, sizes)
        out = backend.run(canvas, sizes)
        assert_outputs_close(ref, out, f"{h}x{w}", [(h, w)], meta)
    pair = [synthetic_image(140, 190, 8), synthetic_image(140, 190, 9)]
    canvas, sizes = (t.numpy() for t in to_canvas(pair))
    both = backend.run(canvas, sizes)
    for i in range(2):
        single = backend.run(canvas[i:i + 1], sizes[i:i + 1])
        for name in ("panoptic", "semantic", "segment_ids", "instance_classes"):
            np.testing.assert_array_equal(both[name][i], single[name][0], err_msg=name)


def test_network_graph_matches_eager_stages(small, tmp_path):
    model, cfg, meta = small
    path = export_onnx(model, cfg, meta, tmp_path / "net.onnx", graph="network", input_size=(160, 224))
    session = ort.InferenceSession(str(path))
    image = torch.from_numpy(synthetic_image(160, 224, 3)).permute(2, 0, 1)[None]
    resized = torch.tensor([[150, 200]])
    out = dict(zip(NETWORK_OUTPUTS, session.run(None, {"images": image.numpy(), "resized_sizes": resized.numpy()})))
    with torch.no_grad():
        x = image.float().flip(1)
        x = (x - model.pixel_mean) / model.pixel_std
        x[:, :, 150:] = 0
        x[:, :, :, 200:] = 0
        heads = model.forward_features(x)
        p = model.params
        s, c, k, v = fuse_thing_kernels(*thing_candidates(heads.centers, heads.weights, p), model.thing_generator, p)
        ss, sk, sv = stuff_kernels(heads.regions, heads.weights, model.stuff_generator, p)
    np.testing.assert_array_equal(out["thing_valid"], v.numpy())
    np.testing.assert_array_equal(out["thing_classes"][v.numpy()], c.numpy()[v.numpy()])
    np.testing.assert_allclose(out["thing_kernels"][v.numpy()], k.numpy()[v.numpy()], atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(out["encoded"], heads.encoded.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_array_equal(out["stuff_valid"], sv.numpy())
    assert v.any() and sv.any()


def test_metadata_travels_with_the_graph(small, small_fixed):
    _, cfg, meta = small
    props = read_metadata(small_fixed)
    assert props["graph"] == "e2e"
    assert [c["id"] for c in props["categories"]] == [c["id"] for c in meta.categories()]
    assert props["thresholds"]["top_num"] == cfg.MODEL.POSITION_HEAD.THING.TOP_NUM
    spec = props["input_spec"]
    assert spec["inputs"]["images"]["channels"] == "RGB" and spec["normalization"]["model_channel_order"] == "BGR"
    assert tuple(spec["net_size"]) == small[0].network_size(150, 210)
    assert "MODEL:" in props["config"] and props["config_hash"]
    names = [o.name for o in onnx.load(str(small_fixed), load_external_data=False).graph.output]
    assert names[:2] == ["panoptic", "semantic"] and "segment_category_ids" in names


def test_panoptic_output_set_leaves_out_the_instance_masks(small, small_fixed, tmp_path):
    """``--outputs panoptic``: the same graph without its [B, K, H, W] instance masks; every other output equal to the
    full graph's, results with [N, 0, 0] masks, and a clear error where instance masks are needed."""
    from pfcn.evaluation.instance_ap import encode_masks

    model, cfg, meta = small
    light = export_onnx(model, cfg, meta, tmp_path / "panoptic.onnx", input_size=(150, 210), batch=2,
                        outputs="panoptic")
    names = [o.name for o in onnx.load(str(light), load_external_data=False).graph.output]
    assert tuple(names) == OUTPUT_SETS["panoptic"] and "instance_masks" not in names
    assert tuple(read_metadata(light)["output_names"]) == OUTPUT_SETS["panoptic"]
    full, part = open_model(small_fixed), open_model(light)
    images = [synthetic_image(150, 210, 5), synthetic_image(120, 180, 6)]
    canvas, sizes = canvas_for(full, images, ["a", "b"])
    ref, out = full.run(canvas, sizes), part.run(canvas, sizes)
    assert set(out) == set(OUTPUT_SETS["panoptic"])
    for name in out:
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    light_results = predict(part, images)
    for a, b in zip(predict(full, images), light_results):
        assert result_agreement(a, b).pixel_agreement == 1.0
        assert b.instance_masks.shape == (len(a.instance_scores), 0, 0)
    with_instances = max(light_results, key=lambda r: len(r.instance_scores))
    assert len(with_instances.instance_scores) > 0
    with pytest.raises(ValueError, match="exported with --outputs panoptic"):
        encode_masks(with_instances.instance_masks)


def test_export_argument_errors(small, tmp_path):
    model, cfg, meta = small
    with pytest.raises(ExportError, match="opset 17.*DeformConv"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", opset=17)
    with pytest.raises(ExportError, match="--input-size 0 100"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", input_size=(0, 100))
    with pytest.raises(ExportError, match="minimum exceeds the maximum"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", dynamic=(500, 64, 100, 640))
    with pytest.raises(ExportError, match="multiple of 32"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", graph="network", input_size=(150, 210))
    with pytest.raises(ExportError, match="--outputs 'masks': choose one of all, panoptic"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", outputs="masks")
    with pytest.raises(ExportError, match="--outputs panoptic: output sets are for the e2e graph"):
        export_onnx(model, cfg, meta, tmp_path / "a.onnx", graph="network", input_size=(160, 224), outputs="panoptic")
    bogus = tmp_path / "not.onnx"
    bogus.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(ValueError, match="not an ONNX model"):
        check_onnx(bogus)
    assert not list(tmp_path.glob(".*tmp*")), "a failed export must not leave temporary files"


def test_onnx_deformconv_equals_torchvision():
    """ONNX Runtime's DeformConv reproduces torchvision.ops.deform_conv2d (large offsets, modulation)."""
    register_symbolics()

    class Deform(torch.nn.Module):
        def forward(self, x, offset, mask, weight, bias):
            return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 13, 17, generator=gen)
    offset = torch.randn(2, 18, 13, 17, generator=gen) * 4.0
    mask = torch.rand(2, 9, 13, 17, generator=gen)
    weight = torch.randn(6, 8, 3, 3, generator=gen)
    bias = torch.randn(6, generator=gen)
    import io

    buf = io.BytesIO()
    torch.onnx.export(Deform(), (x, offset, mask, weight, bias), buf, dynamo=False, opset_version=19,
                      input_names=["x", "offset", "mask", "weight", "bias"])
    session = ort.InferenceSession(buf.getvalue())
    out = session.run(None, {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy(),
                             "weight": weight.numpy(), "bias": bias.numpy()})[0]
    np.testing.assert_allclose(out, Deform()(x, offset, mask, weight, bias).numpy(), atol=1e-5, rtol=1e-5)


def test_r50_export_parity_on_real_photos(tmp_path):
    images = sample_images()
    overrides = ["INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "512",
                 "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT", "1024"]
    model, cfg = calibrated_model(R50_CONFIG, 0, images, overrides)
    meta = default_meta(cfg)
    path = export_onnx(model, cfg, meta, tmp_path / "r50.onnx", dynamic=(64, 64, 1024, 1024))
    assert check_onnx(path).ok
    backend = open_model(path)
    for image in images:
        canvas, sizes = (t.numpy() for t in to_canvas([image]))
        ref = run_eager(model, canvas, sizes)
        out = backend.run(canvas, sizes)
        assert_outputs_close(ref, out, "r50", [image.shape[:2]], meta)
        h, w = image.shape[:2]
        agreement = result_agreement(results_from_outputs(ref, [(h, w)], meta)[0],
                                     results_from_outputs(out, [(h, w)], meta)[0])
        assert agreement.matched >= 2


def test_config_loads_back_from_metadata(small_fixed, tmp_path):
    props = read_metadata(small_fixed)
    yaml_path = tmp_path / "from_onnx.yaml"
    yaml_path.write_text(props["config"])
    cfg = load_config(yaml_path)
    assert cfg.MODEL.RESNETS.DEPTH == 18
