"""Runtimes that execute exported graphs (ONNX Runtime; TensorRT behind an import guard)."""
