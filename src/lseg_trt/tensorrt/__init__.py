"""ONNX -> TensorRT engines (TensorRT 8.5 to 11.x and TensorRT-RTX) and the engine runner."""
