"""pfcn: PanopticFCN from training to static ONNX / TensorRT deployment.

The data flow reads top to bottom:
    pfcn.config      -> the detectron2-style configuration
    pfcn.model       -> the PanopticFCN network (backbone, heads)
    pfcn.inference   -> the one static post-processing implementation
    pfcn.result      -> PanopticResult and its writers
"""

__version__ = "0.1.0"
