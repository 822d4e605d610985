"""Export: PanopticFCN as static ONNX graphs (end-to-end or network-only), checked for TensorRT."""
