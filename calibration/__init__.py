"""pfcn.calibration: FP16 and INT8 graphs from an exported pfcn ONNX, calibration, sensitivity and PQ gates."""
