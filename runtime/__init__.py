"""Running what debertrt builds: runners (PyTorch, ONNX Runtime, TensorRT) behind one contract,
the TensorRT flavour layer, optimization profiles, engine.json and the engine runtime (C++
example under runtime/cpp).

Nothing here imports TensorRT or torch until it runs: reading engine.json and checking input
shapes against an engine's profiles work on any machine.
"""
