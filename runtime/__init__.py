"""pfcn.runtime: run any pfcn artifact through one interface.

    from pfcn.runtime import open_model, predict
    results = predict(open_model("model.onnx"), [image])   # image: HxWx3 uint8 RGB

``backend.py`` holds the interface and the one batching loop; ``ort.py`` (ONNX Runtime), ``tensorrt.py`` (TensorRT
engines), ``aoti.py`` (AOTInductor ``.pt2`` packages), ``pfcn.predictor`` (PyTorch) and ``torch_gpu.py`` (the
PyTorch GPU fast path: FP16, CUDA graphs, torch.compile) implement it; ``loader.py`` picks one by the artifact's suffix;
``compare.py`` measures how two backends agree. Importing this package needs numpy only.
"""

from .backend import Backend, predict
from .loader import open_model

__all__ = ["Backend", "open_model", "predict"]
