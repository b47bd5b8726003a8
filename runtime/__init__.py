"""Running built engines: the Python runtime (C++ example under runtime/cpp).

``Engine`` imports neither TensorRT nor torch until it runs: reading engine.json and
checking input shapes against the engine's profiles work on any machine.
"""

from .engine import Engine, EngineMetadata, TensorRTRunner, unavailable_reason

__all__ = ["Engine", "EngineMetadata", "TensorRTRunner", "unavailable_reason"]
