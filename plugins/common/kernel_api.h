/*
 * What the C entry points of debertrt's kernels share: the export macro and the I/O dtype codes.
 * Host-only (no CUDA headers), for nvcc and the host compiler alike.
 */
#ifndef DEBERTRT_KERNEL_API_H
#define DEBERTRT_KERNEL_API_H

#if defined(_WIN32)
#define DEBERTRT_KERNEL_API __declspec(dllexport)
#else
#define DEBERTRT_KERNEL_API __attribute__((visibility("default")))
#endif

//! I/O element types of the C entry points (not TensorRT's DataType values).
#define DEBERTRT_DTYPE_FLOAT32 0
#define DEBERTRT_DTYPE_FLOAT16 1
#define DEBERTRT_DTYPE_BFLOAT16 2

#endif // DEBERTRT_KERNEL_API_H
