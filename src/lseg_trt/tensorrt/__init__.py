"""ONNX -> TensorRT engines (TensorRT 10.x, 11.x and TensorRT-RTX) and the engine runner."""
