"""The DisentangledAttention plugin: op spec, NumPy reference, ONNX Runtime op, CUDA kernel and TensorRT library."""
