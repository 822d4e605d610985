"""AOTInductor backend: a pfcn ``.pt2`` package (``pfcn-export --format aoti``) behind the backend interface.

The package carries pfcn's metadata next to AOTInductor's own keys (``AOTI_DEVICE_KEY``, ...); both are read from
the archive before its shared library is loaded, so a wrong file or a package for another device gets a clear
message instead of a C++ error. ``torchvision`` is imported first: a package of a model with deformable convs calls
its registered ``torchvision::deform_conv2d`` operator.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np

from pfcn.contract import ArtifactError, ArtifactInfo

MODEL_NAME = "model"  # the name aoti_compile_and_package gives the one model of a package


def read_package_metadata(path: str | Path) -> dict[str, str]:
    """The raw string metadata of a ``.pt2`` (pfcn's keys and AOTInductor's); ArtifactError for a file that is not a
    complete AOTInductor package."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such AOTInductor package")
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not an AOTInductor package (a .pt2 is a zip archive; this one is not, or is "
                            "truncated); re-export it with pfcn-export --format aoti")
    import torch

    loader = torch._C._aoti.AOTIModelPackageLoader
    if not hasattr(loader, "load_metadata_from_package"):  # older torch: read the model's metadata JSON directly
        return _metadata_from_zip(path)
    try:
        props = loader.load_metadata_from_package(str(path), MODEL_NAME)
    except Exception as e:  # torch raises RuntimeError from C++ for an archive without an AOTInductor model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"{path}: no AOTInductor model {MODEL_NAME!r} in this archive ({first}); is it a package "
                            "written by pfcn-export --format aoti (not a torch.export or torch.save file)?") from None
    return dict(props)


def _metadata_from_zip(path: Path) -> dict[str, str]:
    """The metadata map AOTInductor stores as ``<archive>/data/aotinductor/model/<hash>_metadata.json`` (the file
    its C++ loader reads)."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist()
                 if f"/data/aotinductor/{MODEL_NAME}/" in n and n.endswith("_metadata.json")]
        for name in names:
            try:
                props = json.loads(archive.read(name))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(props, dict) and "AOTI_DEVICE_KEY" in props:
                return {str(k): str(v) for k, v in props.items()}
    raise ArtifactError(f"{path}: no AOTInductor model {MODEL_NAME!r} in this archive; is it a package written by "
                        "pfcn-export --format aoti (not a torch.export or torch.save file)?")


def package_device(props: Mapping[str, str]) -> str:
    """"cpu" or "cuda": the device type the package was compiled for."""
    return str(props.get("device") or props.get("AOTI_DEVICE_KEY") or "cpu")


def check_device(path: str | Path, props: Mapping[str, str], device: str) -> str:
    """``device`` is of the package's device type; ArtifactError saying how to open or re-export it otherwise."""
    built = package_device(props)
    wanted = "cuda" if str(device).startswith("cuda") else str(device)
    if wanted not in ("cpu", "cuda"):
        raise ArtifactError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if wanted != built:
        raise ArtifactError(f"{path}: this package was compiled for {built}, not {wanted}; open it with "
                            f"--device {built}, or export a {wanted} package (pfcn-export --format aoti "
                            f"--device {wanted})")
    return built


class AotiBackend:
    """An end-to-end pfcn AOTInductor package.

    Args:
        path: a ``.pt2`` written by ``pfcn-export --format aoti``.
        device: "cpu" or "cuda[:i]", of the device type the package was compiled for.
        batch_size: unused by fixed-batch packages (every pfcn package has a fixed batch); kept for the interface.
    """

    name = "aoti"

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 1):
        self.path = Path(path)
        props = read_package_metadata(self.path)
        self.info = ArtifactInfo.from_metadata(props, str(self.path))
        self.info.require_e2e()
        check_device(self.path, props, device)
        import torch
        import torchvision  # noqa: F401  (registers torchvision::deform_conv2d, which packages may call)

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ArtifactError(f"{self.path}: a CUDA package needs a GPU, and CUDA is not available here")
        self.torch = torch
        self.device = torch.device(device)
        index = self.device.index if self.device.index is not None else -1
        try:
            self.runner = torch._inductor.aoti_load_package(str(self.path), device_index=index)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ArtifactError(f"{self.path}: AOTInductor cannot load this package ({first}); it runs only with the "
                                f"torch version that compiled it ({self.info.props.get('exported_with', '?')}) — "
                                "re-export it here with pfcn-export --format aoti") from None
        self.output_names = list(self.info.props["output_names"])
        self.batch_size = max(1, int(batch_size))
        self.call = self.runner
        if self.device.type == "cuda" and self.info.precision == "fp32":
            from .torch_gpu import StrictFp32  # its convolutions call cuDNN at run time: no TF32 for FP32

            self.call = StrictFp32(self.runner)

    def metadata(self) -> dict[str, str]:
        """The metadata as AOTInductor's loader reports it (the same call a C++ application makes)."""
        return dict(self.runner.get_metadata())

    # The protocol ------------------------------------------------------------------------------------------------
    def group_key(self, h: int, w: int) -> Hashable:
        return (0, 0)  # one fixed canvas: every image that fits shares it

    def max_batch(self) -> int:
        return self.info.batch or self.batch_size

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, Any]:
        want = (self.info.batch, 3) + tuple(self.info.fixed_hw or ())
        if tuple(canvas.shape) != want or tuple(sizes.shape) != (self.info.batch, 2):
            raise ArtifactError(f"{self.path}: the package takes images {list(want)} and sizes "
                                f"[{self.info.batch}, 2], got {list(canvas.shape)} and {list(sizes.shape)}; place "
                                "images with pfcn.runtime.backend.canvas_for")
        torch = self.torch
        images = torch.from_numpy(np.ascontiguousarray(canvas, dtype=np.uint8)).to(self.device)
        sizes_t = torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.int64)).to(self.device)
        with torch.no_grad():
            outputs = self.call(images, sizes_t)
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.runner = self.call = None
