"""Plugin ops: DisentangledAttention (spec, NumPy reference, ONNX Runtime op, CUDA kernel, TensorRT library) and DisentangledFlashAttention (flash/)."""
