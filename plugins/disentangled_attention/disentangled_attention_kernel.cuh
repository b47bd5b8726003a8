/*
 * DisentangledAttention kernel: the common header.
 *
 * Host-only declarations (no device code), so it can be included by the C++ TensorRT
 * plugin (g++) as well as by the CUDA translation unit (nvcc). The contract is the one
 * of plugins/spec.py:
 *
 *   delta(i, j)    = clamp(rel_table[clamp(i - j + Smax - 1, 0, L - 1)] + span, 0, 2*span - 1)
 *   out[b, i, j]   = c2c[b, i, j] + pos_scale * (c2p[b, i, delta(i, j)] + p2c[b, j, delta(i, j)])
 *
 * with L = rel_table_len, Smax = (L + 1) / 2, leading dims flattened into b (rows),
 * c2c/out [rows, Sq, Sk], c2p [rows, Sq, 2*span], p2c [rows, Sk, 2*span], all contiguous.
 * Either positional input may be null (absent). Arithmetic is float32 whatever the I/O
 * type, in the reference's order: (c2p + p2c), times pos_scale, plus c2c, each rounded
 * (no FMA contraction), so float32 results are bit-identical to the NumPy reference.
 */
#ifndef DEBERTRT_DISENTANGLED_ATTENTION_KERNEL_CUH
#define DEBERTRT_DISENTANGLED_ATTENTION_KERNEL_CUH

#include "kernel_api.h"

#include <cstdint>
#include <cuda_runtime_api.h>

//! Version of the C entry point below; bump on any signature or semantic change.
#define DEBERTRT_KERNEL_ABI_VERSION 1

namespace debertrt
{

//! Arguments of one launch. Pointers are device pointers; c2p or p2c may be null.
struct DisentangledAttentionArgs
{
    void const* c2c{nullptr};
    void const* c2p{nullptr};
    void const* p2c{nullptr};
    int32_t const* relTable{nullptr};
    int32_t relTableLen{0};
    void* out{nullptr}; //!< may equal c2c (in place); must not overlap c2p or p2c
    int64_t rows{0};    //!< product of the leading (batch * heads) dims; 0 launches nothing
    int32_t sq{0};
    int32_t sk{0};
    int32_t span{0}; //!< positional inputs' last dim / 2
    float posScale{1.0F};
};

//! Check the arguments; cudaSuccess or cudaErrorInvalidValue. Never touches the device.
cudaError_t validateDisentangledAttention(int32_t dtype, DisentangledAttentionArgs const& args) noexcept;

//! Typed launch; explicit instantiations exist for float, __half and __nv_bfloat16 only.
template <typename T>
cudaError_t launchDisentangledAttention(DisentangledAttentionArgs const& args, cudaStream_t stream) noexcept;

//! Validate, dispatch on dtype (DEBERTRT_DTYPE_*), launch; returns the launch status.
cudaError_t disentangledAttention(int32_t dtype, DisentangledAttentionArgs const& args, cudaStream_t stream) noexcept;

} // namespace debertrt

extern "C"
{
    //! C entry point (ctypes, tests, benchmarks). Returns a cudaError_t code (0 = success).
    //! dtype: DEBERTRT_DTYPE_*; stream: a cudaStream_t (null = legacy default stream).
    DEBERTRT_KERNEL_API int debertrt_disentangled_attention(int dtype, void const* c2c, void const* c2p,
        void const* p2c, int32_t const* rel_table, int rel_table_len, void* out, int64_t rows, int sq, int sk,
        int span, float pos_scale, void* stream);

    //! DEBERTRT_KERNEL_ABI_VERSION of the compiled library.
    DEBERTRT_KERNEL_API int debertrt_kernel_abi_version(void);

    //! cudaGetErrorString for a code returned by debertrt_disentangled_attention.
    DEBERTRT_KERNEL_API char const* debertrt_error_string(int code);
}

#endif // DEBERTRT_DISENTANGLED_ATTENTION_KERNEL_CUH
