"""Running built engines: the Python runtime (C++ example under runtime/cpp)."""
