/*
 * CUDA on host threads: compile a .cu translation unit as C++ (g++ or clang++) and run its
 * kernels on the CPU, so that AddressSanitizer and ThreadSanitizer see every access the
 * kernel source makes. Force-included (-include cuda_host.h) ahead of the source; the one
 * thing a macro cannot express, the launch `k<<<grid, block, shmem, stream>>>(args)`, is
 * rewritten on its own line to `::cuda_host::launch(k, grid, block, shmem, stream)(args)`
 * (harness.py, `translate`); kernel bodies stay byte-identical.
 *
 * Execution model (what a kernel may rely on, no more):
 * - A launch is synchronous. Its blocks run one after another (x fastest, then y, z), each
 *   on blockDim.x * y * z threads, one std::thread per CUDA thread (kept across launches).
 * - `__shared__` is `static`: one instance per variable; as one block runs at a time, that is
 *   one instance per running block, shared by its threads. Like on a GPU it is not cleared
 *   between blocks. ASan sees it as a global array (with redzones), TSan as shared memory.
 * - `__syncthreads()` is a barrier of the block's threads (atomics with acquire/release, a
 *   futex to sleep on), so the happens-before edges TSan sees are exactly the barrier's: a
 *   missing barrier leaves the accesses it ordered racing. A divergent barrier (one that a
 *   thread of the block returned without reaching) aborts with a message.
 * - Warp shuffles and `__syncwarp`: full-warp masks only; every lane is a thread of its own
 *   (independent thread scheduling, as on sm_70+), lanes exchange values through a per-warp
 *   slot array between two warp barriers.
 * - half / bfloat16: the CUDA headers' own host conversions (cuda_fp16.h, cuda_bf16.h).
 * - `__ldg` is a plain load; `__fadd_rn` / `__fmul_rn` are one IEEE float operation each
 *   (compile with -ffp-contract=off so nothing fuses them).
 */
#ifndef CUDA_HOST_H
#define CUDA_HOST_H

// The real headers first, while their own execution-space macros are in force.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstring>
#include <tuple>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cuda_host
{

//! Run `body` once per CUDA thread of the grid (see the execution model above). An invalid
//! configuration runs nothing and sets the error cudaGetLastError() returns.
void runGrid(dim3 grid, dim3 block, std::size_t sharedBytes, cudaStream_t stream, void (*body)(void const*),
    void const* closure);

void syncthreads();
void syncwarp(unsigned mask);

//! Every lane of the calling warp passes `bytes` (<= 8) of its value; returns, in `out`, the
//! value of lane `sourceLane` (a lane of the caller's warp, as the shuffle variant chose it).
void exchange(unsigned mask, void const* value, void* out, std::size_t bytes, int sourceLane);

//! Lane of the calling thread within its warp.
int laneId();

template <typename... Params>
class Launch
{
public:
    Launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t sharedBytes, cudaStream_t stream)
        : mKernel(kernel)
        , mGrid(grid)
        , mBlock(block)
        , mSharedBytes(sharedBytes)
        , mStream(stream)
    {
    }

    //! Arguments convert to the kernel's parameter types here, as in a CUDA launch; every
    //! thread then calls the kernel with its own copies of them.
    template <typename... Args>
    void operator()(Args&&... args) const
    {
        Closure const closure{mKernel, std::tuple<Params...>(std::forward<Args>(args)...)};
        runGrid(mGrid, mBlock, mSharedBytes, mStream, &Launch::call, &closure);
    }

private:
    struct Closure
    {
        void (*kernel)(Params...);
        std::tuple<Params...> params;
    };

    static void call(void const* opaque)
    {
        Closure const& closure = *static_cast<Closure const*>(opaque);
        std::apply(closure.kernel, closure.params);
    }

    void (*mKernel)(Params...);
    dim3 mGrid;
    dim3 mBlock;
    std::size_t mSharedBytes;
    cudaStream_t mStream;
};

template <typename... Params>
Launch<Params...> launch(
    void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t sharedBytes = 0, cudaStream_t stream = nullptr)
{
    return Launch<Params...>(kernel, grid, block, sharedBytes, stream);
}

template <typename T>
T shuffleFrom(unsigned mask, T value, int sourceLane)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    T result;
    exchange(mask, &value, &result, sizeof(T), sourceLane);
    return result;
}

} // namespace cuda_host

inline void __syncthreads()
{
    cuda_host::syncthreads();
}

inline void __syncwarp(unsigned mask = 0xffffffffU)
{
    cuda_host::syncwarp(mask);
}

// Source lanes as the CUDA programming guide defines them for a `width`-lane segment.
template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32)
{
    int const lane = cuda_host::laneId();
    return cuda_host::shuffleFrom(mask, var, (lane & ~(width - 1)) + (srcLane & (width - 1)));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32)
{
    int const lane = cuda_host::laneId();
    int const source = (lane & (width - 1)) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
    return cuda_host::shuffleFrom(mask, var, source);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32)
{
    int const lane = cuda_host::laneId();
    int const source = (lane & (width - 1)) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
    return cuda_host::shuffleFrom(mask, var, source);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32)
{
    int const lane = cuda_host::laneId();
    int const source = lane ^ laneMask;
    // A lane may read from its own or an earlier segment; a later one gives its own value.
    return cuda_host::shuffleFrom(mask, var, source < (lane & ~(width - 1)) + width ? source : lane);
}

template <typename T>
inline T __ldg(T const* address)
{
    return *address;
}

inline float __fadd_rn(float a, float b)
{
    return a + b;
}

inline float __fmul_rn(float a, float b)
{
    return a * b;
}

#endif // CUDA_HOST_H
