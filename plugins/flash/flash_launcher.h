/*
 * DisentangledFlashAttention: the launcher of the Triton kernel's ahead-of-time cubins.
 *
 * Host C++ only (CUDA runtime API, no device code). The cubins (flash_cubins.inc, generated at build
 * time by debertrt.plugins.flash.cubins from plugins/flash/kernel.py) are embedded in the library;
 * each is loaded once per process with cudaLibraryLoadData (context-independent, so every device
 * and context of the process can launch it) the first time a launch needs it. The contract is
 * plugins/spec.py's DISENTANGLED_FLASH_ATTENTION; this launcher takes contiguous tensors:
 *
 *   q, k, v   [B, H, S, D]      pos_key, pos_query [H, 2P, D] (either may be null)
 *   mask      [B, S] int32      rel_table [2*Smax - 1] int32      out [B, S, H*D]
 *
 * with D a multiple of 16 up to 128 (the kernels are specialized on 16-divisible strides) and
 * every pointer 16-byte aligned.
 */
#ifndef DEBERTRT_FLASH_LAUNCHER_H
#define DEBERTRT_FLASH_LAUNCHER_H

#include "kernel_api.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>
#include <string>

//! Version of the C entry points below; bump on any signature or semantic change.
#define DEBERTRT_FLASH_ABI_VERSION 1

namespace debertrt
{
namespace flash
{

//! One compiled kernel: its target, specialization, launch shape and cubin.
struct FlashVariant
{
    int32_t arch;    //!< 80 = sm_80 SASS (runs on sm_80/86/89), 90 = sm_90 SASS
    int32_t dtype;   //!< DEBERTRT_DTYPE_*
    int32_t blockD;  //!< head-dim tile: serves head dims <= blockD
    int32_t hasC2p;  //!< pos_key term compiled in
    int32_t hasP2c;  //!< pos_query term compiled in
    int32_t blockM;  //!< query rows per program
    int32_t numWarps;
    int32_t sharedBytes; //!< dynamic shared memory per program
    char const* kernelName;
    unsigned char const* cubinBegin;
    unsigned char const* cubinEnd;
};

//! Arguments of one launch; device pointers; posKey or posQuery may be null (absent).
struct FlashAttentionArgs
{
    void const* q{nullptr};
    void const* k{nullptr};
    void const* v{nullptr};
    void const* posKey{nullptr};
    void const* posQuery{nullptr};
    int32_t const* mask{nullptr};
    int32_t const* relTable{nullptr};
    int64_t relTableLen{0};
    void* out{nullptr};
    int64_t batch{0};
    int64_t heads{0};
    int64_t seq{0};
    int64_t headDim{0};
    int64_t positionRows{0}; //!< 2P, the positional inputs' second dimension
    float qScale{1.0F};
    float kScale{1.0F};
    float posScale{1.0F};
};

//! Kernels in this library.
size_t variantCount() noexcept;
FlashVariant const& variantAt(size_t index) noexcept;

//! The variant for (dtype, head dim, presence) on a device of compute capability `major`.`minor`
//! (major < 0: any architecture); nullptr when this library has none.
FlashVariant const* findVariant(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, int32_t major,
    int32_t minor) noexcept;

//! Why no kernel of this library serves (dtype, head dim, presence) on any or (major >= 0) that
//! architecture, naming what the library holds; empty when one does.
std::string whyNoVariant(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, int32_t major, int32_t minor);

//! Why the kernels cannot take this head dim (not a multiple of 16 in 16..128); empty when they can.
std::string checkHeadDim(int64_t headDim);

//! Why (dtype, head dim, presence) cannot run here: the head-dim rule, then whether this library holds a
//! kernel for it on the current device (or on any architecture when no device is usable). Empty when it can.
std::string checkServable(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c);

//! Host-only argument check (touches no device): empty when the launch may proceed.
std::string validate(int32_t dtype, FlashAttentionArgs const& args);

//! Load the kernel for (dtype, head dim, presence) on the current device, once per process.
//! cudaSuccess, or an error code with `why` filled.
cudaError_t prepare(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, std::string& why) noexcept;

//! Validate, load if needed, launch on `stream`. An empty batch is a success that launches nothing.
cudaError_t flashAttention(int32_t dtype, FlashAttentionArgs const& args, cudaStream_t stream, std::string& why) noexcept;

} // namespace flash
} // namespace debertrt

extern "C"
{
    //! C entry point (ctypes, GPU checks). Returns a cudaError_t code (0 = success); the reason of a
    //! failure is in debertrt_flash_last_error() (per thread).
    DEBERTRT_KERNEL_API int debertrt_flash_attention(int dtype, void const* q, void const* k, void const* v,
        void const* pos_key, void const* pos_query, int32_t const* mask, int32_t const* rel_table,
        int64_t rel_table_len, void* out, int64_t batch, int64_t heads, int64_t seq, int64_t head_dim,
        int64_t position_rows, float q_scale, float k_scale, float pos_scale, void* stream);

    //! What debertrt_flash_attention would launch, computed without a device (for checks on any machine):
    //! the same validation, then `ints` gets the kernel's 22 int32 scalars and `floats` its 3 float32 ones,
    //! in the order of debertrt_flash_kernel_parameters(); `launch` gets programs, threads per program,
    //! shared bytes. Returns a cudaError_t code; "nothing to launch" in the last error for an empty batch.
    DEBERTRT_KERNEL_API int debertrt_flash_kernel_arguments(int dtype, void const* q, void const* k, void const* v,
        void const* pos_key, void const* pos_query, int32_t const* mask, int32_t const* rel_table,
        int64_t rel_table_len, void* out, int64_t batch, int64_t heads, int64_t seq, int64_t head_dim,
        int64_t position_rows, float q_scale, float k_scale, float pos_scale, int32_t* ints, float* floats,
        int64_t* launch);

    //! The compiled kernel's parameter names, comma-separated, in launch order (Triton's hidden pointers,
    //! passed as null after them, not listed).
    DEBERTRT_KERNEL_API char const* debertrt_flash_kernel_parameters(void);

    //! Why the calling thread's last debertrt_flash_attention call failed ("" after a success).
    DEBERTRT_KERNEL_API char const* debertrt_flash_last_error(void);

    //! DEBERTRT_FLASH_ABI_VERSION of the compiled library.
    DEBERTRT_KERNEL_API int debertrt_flash_abi_version(void);

    //! The compiled variants: count, then each one's fields (returns 1 for a bad index).
    DEBERTRT_KERNEL_API int debertrt_flash_variant_count(void);
    DEBERTRT_KERNEL_API int debertrt_flash_variant(int index, int* arch, int* dtype, int* block_d, int* has_c2p,
        int* has_p2c, int* shared_bytes);
}

#endif // DEBERTRT_FLASH_LAUNCHER_H
