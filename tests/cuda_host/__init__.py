"""CUDA on host threads: compile CUDA sources for the CPU and run them under sanitizers."""
