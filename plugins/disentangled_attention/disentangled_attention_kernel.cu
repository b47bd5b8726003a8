/*
 * DisentangledAttention kernel (fp32 / fp16 / bf16 I/O, fp32 arithmetic).
 *
 * Design: skewed tiles in (query row i, relative position r = i - j) space.
 *
 * A block owns TILE = 64 query rows [i0, i0 + 64) and 64 relative positions
 * [r0, r0 + 64); lane `l` owns r0 + l and r0 + 32 + l, so it computes
 * delta(r) = clamp(table[r + Smax - 1] + span, 0, 2*span - 1) twice per tile and every
 * output it writes, (i, j = i - r), reuses them. Per row i the block writes the
 * contiguous key window j in (i - r0 - 64, i - r0]: c2c reads and out writes are
 * coalesced (64 elements per row and tile). c2p[b, i, delta(r)] for consecutive r is a
 * monotone run along row i (for the monotone bucket tables the rewrite emits): coalesced.
 *
 * p2c[b, j, delta(i - j)] is the strided one: along a warp (fixed i) j changes, so every
 * lane would hit a different p2c row. Fixing j instead (a diagonal of the tile,
 * c = ii - rr = const) makes the lanes read consecutive delta(r) of ONE p2c row: the
 * block stages the 64 x 64 p2c values it needs diagonal by diagonal (coalesced global
 * reads) into shared memory laid out [ii][rr] (fp32, 16 KiB), then reads them back row by
 * row. Diagonal writes hit word 65 * rr + 64 * c (bank = lane) and row reads
 * 64 * ii + rr (bank = lane): both conflict-free without padding.
 *
 * Every element (b, i, delta) of c2p and (b, j, delta) of p2c that an output needs is
 * loaded by exactly one tile (repeats only where the bucket table repeats a value, and
 * those fall in the same sectors), so DRAM traffic is the byte floor
 *     read c2c + write out + read the used part of c2p and p2c,
 * and L2 -> SM traffic exceeds it only by 32-byte sector rounding of the tile's row
 * segments and diagonals (modelled for fp16, span 256: 1.37x the floor at S = 512, 1.49x
 * at S = 2048; 32-wide tiles would be 1.73x / 1.98x).
 * For a query tile the r range [i0 - Sk + 1, i0 + 63] is cut into ceil((Sk + 63) / 64)
 * tiles; the partial ones at both ends are masked (~63 / Sk idle lanes, 12 % at Sk = 512).
 *
 * Bounds: every access is predicated on 0 <= i < Sq and 0 <= j < Sk; the table index is
 * clamped into [0, L - 1] and delta into [0, 2*span - 1], so any table (even a
 * non-monotone or too short one) reads in range. Leading rows run over gridDim.y with a
 * stride loop, so any row count works; offsets that can pass 2^31 are 64-bit.
 */
#include "disentangled_attention_kernel.cuh"

#include <climits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace debertrt
{
namespace
{

constexpr int32_t kWarpSize = 32;
constexpr int32_t kTile = 64;                     // query rows and relative positions per block
constexpr int32_t kWarps = 8;                     // block = kWarpSize x kWarps threads
constexpr int32_t kHalves = kTile / kWarpSize;    // r columns per lane: rr = lane + 32 * h
constexpr int32_t kRowsPerWarp = kTile / kWarps;  // rows ii = warp + 8 * k
constexpr int32_t kRowsPerBatch = 4;              // rows whose loads are in flight together
constexpr int32_t kStepsPerHalf = kTile + kWarpSize - 1; // diagonals meeting one half-tile
constexpr int32_t kSteps = kHalves * kStepsPerHalf;      // staging steps (warp-wide loads)
constexpr int32_t kStepsPerWarp = (kSteps + kWarps - 1) / kWarps;
constexpr int32_t kMaxGridY = 65535;
constexpr int32_t kMinBlocksPerSm = 4; // caps registers at 64 / thread (ptxas uses ~48: 5 blocks / SM)
static_assert(kHalves == 2, "a lane owns two relative positions");
static_assert(kRowsPerWarp % kRowsPerBatch == 0, "rows must split into batches");

template <typename T>
struct Io;

template <>
struct Io<float>
{
    static __device__ __forceinline__ float load(float const* p)
    {
        return __ldg(p);
    }
    static __device__ __forceinline__ float loadAliased(float const* p)
    {
        return *p;
    }
    static __device__ __forceinline__ void store(float* p, float v)
    {
        *p = v;
    }
};

template <>
struct Io<__half>
{
    static __device__ __forceinline__ float load(__half const* p)
    {
        return __half2float(__ushort_as_half(__ldg(reinterpret_cast<unsigned short const*>(p))));
    }
    static __device__ __forceinline__ float loadAliased(__half const* p)
    {
        return __half2float(*p);
    }
    static __device__ __forceinline__ void store(__half* p, float v)
    {
        *p = __float2half_rn(v);
    }
};

template <>
struct Io<__nv_bfloat16>
{
    static __device__ __forceinline__ float load(__nv_bfloat16 const* p)
    {
        return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<unsigned short const*>(p))));
    }
    static __device__ __forceinline__ float loadAliased(__nv_bfloat16 const* p)
    {
        return __bfloat162float(*p);
    }
    static __device__ __forceinline__ void store(__nv_bfloat16* p, float v)
    {
        *p = __float2bfloat16_rn(v);
    }
};

struct KernelShape
{
    int64_t rows;
    int32_t width; // 2 * span
    int32_t sq;
    int32_t sk;
    int32_t span;
    int32_t tableLen;
    int32_t nRTiles;
    float posScale;
};

__device__ __forceinline__ int32_t deltaOf(int32_t r, int32_t const* __restrict__ relTable, KernelShape const& shape)
{
    int64_t tableIdx = static_cast<int64_t>(r) + (static_cast<int64_t>(shape.tableLen) + 1) / 2 - 1;
    tableIdx = tableIdx < 0 ? 0 : (tableIdx >= shape.tableLen ? shape.tableLen - 1 : tableIdx);
    int64_t delta = static_cast<int64_t>(__ldg(relTable + tableIdx)) + shape.span;
    delta = delta < 0 ? 0 : (delta >= shape.width ? shape.width - 1 : delta);
    return static_cast<int32_t>(delta);
}

// c2c and out are not __restrict__: out may alias c2c (each element is read, then
// written, by the same thread). c2p, p2c and the table are read-only and never aliased.
// Index arithmetic is 32-bit within a row (validated: Sq + Sk + 4 * TILE and 2 * span fit
// int32); anything that can pass 2^31 (row * Sk, b * Sq * Sk) is 64-bit.
template <typename T>
__global__ void __launch_bounds__(kWarpSize* kWarps, kMinBlocksPerSm) disentangledAttentionKernel(T const* c2c,
    T const* __restrict__ c2p, T const* __restrict__ p2c, int32_t const* __restrict__ relTable, T* out,
    KernelShape const shape)
{
    __shared__ float p2cTile[kTile * kTile]; // [ii][rr]

    int32_t const lane = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = static_cast<int32_t>(threadIdx.y);
    int32_t const iTile = static_cast<int32_t>(blockIdx.x) / shape.nRTiles;
    int32_t const rTile = static_cast<int32_t>(blockIdx.x) - iTile * shape.nRTiles;
    int32_t const i0 = iTile * kTile;
    // r of column rr = 0; the r range of this query tile starts at i0 - (Sk - 1).
    int32_t const rBase = i0 - (shape.sk - 1) + rTile * kTile;
    int32_t const r0 = rBase + lane;             // column rr = lane
    int32_t const r1 = rBase + lane + kWarpSize; // column rr = lane + 32
    int32_t const delta0 = deltaOf(r0, relTable, shape);
    int32_t const delta1 = deltaOf(r1, relTable, shape);

    bool const hasC2p = c2p != nullptr;
    bool const hasP2c = p2c != nullptr;
    int64_t const matrix = static_cast<int64_t>(shape.sq) * shape.sk;

    for (int64_t b = blockIdx.y; b < shape.rows; b += gridDim.y)
    {
        if (hasP2c)
        {
            // Stage p2c[b, j, delta(r)] for the tile. Step s covers half h of diagonal
            // c = ii - rr, i.e. p2c row j = i0 + c - rBase (the same for the whole warp):
            // lanes read consecutive delta(r) of that row.
            T const* p2cB = p2c + b * shape.sk * shape.width;
#pragma unroll 4
            for (int32_t m = 0; m < kStepsPerWarp; ++m)
            {
                int32_t const step = warp + m * kWarps;
                int32_t const h = step >= kStepsPerHalf ? 1 : 0;
                // h = 0: c in [-31, 63]; h = 1: c in [-63, 31] (the diagonals meeting that half).
                int32_t const c = h == 0 ? step - (kWarpSize - 1) : step - kStepsPerHalf - (kTile - 1);
                int32_t const j = i0 + c - rBase;
                if (step >= kSteps || j < 0 || j >= shape.sk)
                {
                    continue; // warp-uniform
                }
                int32_t const rr = lane + h * kWarpSize;
                int32_t const ii = rr + c;
                if (ii >= 0 && ii < kTile && i0 + ii < shape.sq)
                {
                    p2cTile[ii * kTile + rr]
                        = Io<T>::load(p2cB + static_cast<int64_t>(j) * shape.width + (h == 0 ? delta0 : delta1));
                }
            }
            __syncthreads();
        }

        T const* c2cB = c2c + b * matrix;
        T* outB = out + b * matrix;
        T const* c2pB = hasC2p ? c2p + b * shape.sq * shape.width : nullptr;

        // Not unrolled: unrolling hoists all 16 outputs' loads and addresses (~128 registers);
        // one batch of 4 rows x 2 columns keeps 16 loads in flight at ~48 registers (5 blocks / SM).
#pragma unroll 1
        for (int32_t batch = 0; batch < kRowsPerWarp / kRowsPerBatch; ++batch)
        {
            // Gather a batch first (independent loads in flight), then compute and store.
            float content[kRowsPerBatch][kHalves];
            float position[kRowsPerBatch][kHalves];
#pragma unroll
            for (int32_t k = 0; k < kRowsPerBatch; ++k)
            {
                int32_t const ii = warp + (batch * kRowsPerBatch + k) * kWarps;
                int32_t const i = i0 + ii;
#pragma unroll
                for (int32_t h = 0; h < kHalves; ++h)
                {
                    int32_t const j = i - (h == 0 ? r0 : r1);
                    content[k][h] = 0.0F;
                    position[k][h] = 0.0F;
                    if (i < shape.sq && j >= 0 && j < shape.sk)
                    {
                        content[k][h] = Io<T>::loadAliased(c2cB + static_cast<int64_t>(i) * shape.sk + j);
                        if (hasC2p)
                        {
                            position[k][h] = Io<T>::load(
                                c2pB + static_cast<int64_t>(i) * shape.width + (h == 0 ? delta0 : delta1));
                        }
                        if (hasP2c)
                        {
                            // Same order as the reference: 0 + c2p, then + p2c.
                            position[k][h]
                                = __fadd_rn(position[k][h], p2cTile[ii * kTile + lane + h * kWarpSize]);
                        }
                    }
                }
            }
#pragma unroll
            for (int32_t k = 0; k < kRowsPerBatch; ++k)
            {
                int32_t const i = i0 + warp + (batch * kRowsPerBatch + k) * kWarps;
#pragma unroll
                for (int32_t h = 0; h < kHalves; ++h)
                {
                    int32_t const j = i - (h == 0 ? r0 : r1);
                    if (i < shape.sq && j >= 0 && j < shape.sk)
                    {
                        float const value = __fadd_rn(content[k][h], __fmul_rn(shape.posScale, position[k][h]));
                        Io<T>::store(outB + static_cast<int64_t>(i) * shape.sk + j, value);
                    }
                }
            }
        }

        if (hasP2c)
        {
            __syncthreads(); // the next row's staging overwrites p2cTile
        }
    }
}

int32_t ceilDiv(int64_t a, int64_t b)
{
    return static_cast<int32_t>((a + b - 1) / b);
}

} // namespace

cudaError_t validateDisentangledAttention(int32_t dtype, DisentangledAttentionArgs const& args) noexcept
{
    bool const knownType = dtype == DEBERTRT_DTYPE_FLOAT32 || dtype == DEBERTRT_DTYPE_FLOAT16
        || dtype == DEBERTRT_DTYPE_BFLOAT16;
    if (!knownType || args.rows < 0)
    {
        return cudaErrorInvalidValue;
    }
    if (args.rows == 0)
    {
        return cudaSuccess;
    }
    if (args.c2c == nullptr || args.out == nullptr || args.relTable == nullptr || args.relTableLen < 1
        || (args.c2p == nullptr && args.p2c == nullptr) || args.sq < 1 || args.sk < 1 || args.span < 1
        || args.span > INT32_MAX / 2 - 1
        || static_cast<int64_t>(args.sq) + args.sk > static_cast<int64_t>(INT32_MAX) - 4 * kTile)
    {
        return cudaErrorInvalidValue;
    }
    if (args.out == args.c2p || args.out == args.p2c)
    {
        return cudaErrorInvalidValue;
    }
    // Grid: x = query tiles * r tiles must fit a signed 32-bit block index.
    int64_t const nITiles = (static_cast<int64_t>(args.sq) + kTile - 1) / kTile;
    int64_t const nRTiles = (static_cast<int64_t>(args.sk) + 2 * kTile - 2) / kTile; // ceil((Sk + TILE - 1) / TILE)
    if (nITiles * nRTiles > INT32_MAX)
    {
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

template <typename T>
cudaError_t launchDisentangledAttention(DisentangledAttentionArgs const& args, cudaStream_t stream) noexcept
{
    if (args.rows == 0)
    {
        return cudaSuccess;
    }
    KernelShape shape{};
    shape.rows = args.rows;
    shape.width = 2 * args.span;
    shape.sq = args.sq;
    shape.sk = args.sk;
    shape.span = args.span;
    shape.tableLen = args.relTableLen;
    shape.nRTiles = ceilDiv(static_cast<int64_t>(args.sk) + kTile - 1, kTile);
    shape.posScale = args.posScale;
    int32_t const nITiles = ceilDiv(args.sq, kTile);

    dim3 const block(kWarpSize, kWarps, 1);
    dim3 const grid(static_cast<unsigned>(nITiles) * static_cast<unsigned>(shape.nRTiles),
        static_cast<unsigned>(args.rows < kMaxGridY ? args.rows : kMaxGridY), 1);
    disentangledAttentionKernel<T><<<grid, block, 0, stream>>>(static_cast<T const*>(args.c2c),
        static_cast<T const*>(args.c2p), static_cast<T const*>(args.p2c), args.relTable, static_cast<T*>(args.out),
        shape);
    return cudaGetLastError();
}

template cudaError_t launchDisentangledAttention<float>(DisentangledAttentionArgs const&, cudaStream_t) noexcept;
template cudaError_t launchDisentangledAttention<__half>(DisentangledAttentionArgs const&, cudaStream_t) noexcept;
template cudaError_t launchDisentangledAttention<__nv_bfloat16>(
    DisentangledAttentionArgs const&, cudaStream_t) noexcept;

cudaError_t disentangledAttention(int32_t dtype, DisentangledAttentionArgs const& args, cudaStream_t stream) noexcept
{
    cudaError_t const status = validateDisentangledAttention(dtype, args);
    if (status != cudaSuccess || args.rows == 0)
    {
        return status;
    }
    switch (dtype)
    {
    case DEBERTRT_DTYPE_FLOAT32: return launchDisentangledAttention<float>(args, stream);
    case DEBERTRT_DTYPE_FLOAT16: return launchDisentangledAttention<__half>(args, stream);
    case DEBERTRT_DTYPE_BFLOAT16: return launchDisentangledAttention<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace debertrt

extern "C"
{
    int debertrt_disentangled_attention(int dtype, void const* c2c, void const* c2p, void const* p2c,
        int32_t const* rel_table, int rel_table_len, void* out, int64_t rows, int sq, int sk, int span,
        float pos_scale, void* stream)
    {
        debertrt::DisentangledAttentionArgs args;
        args.c2c = c2c;
        args.c2p = c2p;
        args.p2c = p2c;
        args.relTable = rel_table;
        args.relTableLen = rel_table_len;
        args.out = out;
        args.rows = rows;
        args.sq = sq;
        args.sk = sk;
        args.span = span;
        args.posScale = pos_scale;
        return static_cast<int>(debertrt::disentangledAttention(dtype, args, static_cast<cudaStream_t>(stream)));
    }

    int debertrt_kernel_abi_version(void)
    {
        return DEBERTRT_KERNEL_ABI_VERSION;
    }

    char const* debertrt_error_string(int code)
    {
        return cudaGetErrorString(static_cast<cudaError_t>(code));
    }
}
