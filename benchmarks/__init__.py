"""pfcn-bench: every artifact (PyTorch checkpoint, ONNX of any precision, TensorRT engine) timed through the one
backend interface, per stage where the backend can split it, beside the official algorithm on the same weights and
images, and as a share of the machine's measured compute floor."""
