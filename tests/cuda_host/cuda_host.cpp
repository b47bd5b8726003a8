// The runtime behind cuda_host.h: grids on std::threads, block and warp barriers, the
// CUDA runtime's error functions. See cuda_host.h for the execution model.
#include "cuda_host.h"

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace cuda_host
{
namespace
{

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridYZ = 65535;

[[noreturn]] void fatal(char const* what)
{
    std::fprintf(stderr, "cuda_host: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y,
        blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::fflush(stderr);
    std::abort();
}

// Sleep while `word` holds `value`; wake every sleeper. On Linux the futex itself: libstdc++'s
// atomic wait spins first, and under TSan those instrumented loads doubled the run time.
#if defined(__linux__)
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex word");

void sleepWhile(std::atomic<uint32_t>& word, uint32_t value)
{
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, value, nullptr, nullptr, 0);
}

void wakeAll(std::atomic<uint32_t>& word)
{
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}
#else
void sleepWhile(std::atomic<uint32_t>& word, uint32_t value)
{
    word.wait(value, std::memory_order_relaxed);
}

void wakeAll(std::atomic<uint32_t>& word)
{
    word.notify_all();
}
#endif

//! A barrier of `size` threads that also sees divergence: a thread leaving the block while
//! others wait at the barrier, or arriving after one has left.
//!
//! Arrivals (low 16 bits) and departures (high 16 bits) share one atomic, so of two threads
//! that disagree the later one sees the other. The last to arrive resets the counts and
//! publishes a new generation (release); the others sleep on the generation and acquire it.
//! No mutex: 256 threads retaking one after each wake-up doubled the run time.
class Barrier
{
public:
    Barrier(unsigned size, char const* divergence)
        : mSize(size)
        , mDivergence(divergence)
    {
    }

    //! __syncthreads / __syncwarp.
    void wait()
    {
        arrive(kArrival, [] {});
    }

    //! The calling thread leaves the block; returns once all have. The last one runs
    //! `whenAllLeft` before anyone goes on.
    template <typename Callback>
    void finish(Callback whenAllLeft)
    {
        arrive(kDeparture, whenAllLeft);
    }

    //! The calling thread leaves the block without waiting for the others.
    void leave()
    {
        count(kDeparture);
    }

    //! Forget departures (call when no thread can reach this barrier).
    void rearm()
    {
        mCounts.store(0, std::memory_order_relaxed);
    }

private:
    static constexpr uint32_t kArrival = 1;
    static constexpr uint32_t kDeparture = 1U << 16;

    //! Adds one arrival or departure; returns how many of that kind there are now.
    uint32_t count(uint32_t kind)
    {
        uint32_t const before = mCounts.fetch_add(kind, std::memory_order_acq_rel);
        uint32_t const other = kind == kArrival ? before >> 16 : before & 0xffffU;
        if (other != 0)
        {
            fatal(mDivergence);
        }
        return (kind == kArrival ? before & 0xffffU : before >> 16) + 1;
    }

    template <typename Callback>
    void arrive(uint32_t kind, Callback const& last)
    {
        uint32_t const generation = mGeneration.load(std::memory_order_acquire);
        if (count(kind) == mSize)
        {
            last();
            mCounts.store(0, std::memory_order_relaxed);
            mGeneration.store(generation + 1, std::memory_order_release);
            wakeAll(mGeneration);
            return;
        }
        while (mGeneration.load(std::memory_order_acquire) == generation)
        {
            sleepWhile(mGeneration, generation);
        }
    }

    std::atomic<uint32_t> mCounts{0};
    std::atomic<uint32_t> mGeneration{0};
    unsigned const mSize;
    char const* const mDivergence;
};

struct Warp
{
    explicit Warp(unsigned laneCount)
        : lanes(laneCount)
        , barrier(laneCount, "divergent warp barrier (__syncwarp or a shuffle not reached by every lane)")
    {
    }

    unsigned const lanes;
    Barrier barrier;
    uint64_t slots[kWarpSize]{};
};

struct Grid
{
    Grid(dim3 gridDims, dim3 blockDims)
        : grid(gridDims)
        , block(blockDims)
        , threads(blockDims.x * blockDims.y * blockDims.z)
        , blockBarrier(threads, "divergent __syncthreads (a thread of the block returned without reaching it)")
    {
        for (unsigned first = 0; first < threads; first += kWarpSize)
        {
            warps.push_back(std::make_unique<Warp>(threads - first < kWarpSize ? threads - first : kWarpSize));
        }
    }

    dim3 const grid;
    dim3 const block;
    unsigned const threads;
    Barrier blockBarrier;
    std::vector<std::unique_ptr<Warp>> warps;
};

thread_local Grid* tGrid = nullptr;
thread_local unsigned tLinearThread = 0;
thread_local cudaError_t tLastError = cudaSuccess;

Grid& currentGrid()
{
    if (tGrid == nullptr)
    {
        fatal("a device function was called outside a kernel launch");
    }
    return *tGrid;
}

Warp& currentWarp(unsigned mask)
{
    Warp& warp = *currentGrid().warps[tLinearThread / kWarpSize];
    unsigned const full = warp.lanes == kWarpSize ? 0xffffffffU : (1U << warp.lanes) - 1U;
    if (mask != full)
    {
        fatal("only full-warp masks are emulated");
    }
    return warp;
}

void runThread(Grid& grid, unsigned linear, void (*body)(void const*), void const* closure)
{
    tGrid = &grid;
    tLinearThread = linear;
    blockDim = grid.block;
    gridDim = grid.grid;
    threadIdx = make_uint3(linear % grid.block.x, linear / grid.block.x % grid.block.y,
        linear / (grid.block.x * grid.block.y));
    Warp& warp = *grid.warps[linear / kWarpSize];
    for (unsigned z = 0; z < grid.grid.z; ++z)
    {
        for (unsigned y = 0; y < grid.grid.y; ++y)
        {
            for (unsigned x = 0; x < grid.grid.x; ++x)
            {
                blockIdx = make_uint3(x, y, z);
                body(closure);
                warp.barrier.leave();
                // The next block starts when this one is done.
                grid.blockBarrier.finish([&grid] {
                    for (std::unique_ptr<Warp> const& each : grid.warps)
                    {
                        each->barrier.rearm();
                    }
                });
            }
        }
    }
    tGrid = nullptr;
}

//! Worker threads kept for the whole process: one per CUDA thread of the largest block seen.
//! (Starting 256 threads per launch costs ~0.2 s under TSan; the launches of a test matrix
//! would spend most of their time there.)
class Pool
{
public:
    static Pool& instance()
    {
        static Pool pool;
        return pool;
    }

    ~Pool()
    {
        {
            std::lock_guard<std::mutex> lock(mMutex);
            mStop = true;
        }
        mStart.notify_all();
        for (std::thread& worker : mWorkers)
        {
            worker.join();
        }
    }

    //! Runs the grid on the first grid.threads workers; returns when all of them are done.
    void run(Grid& grid, void (*body)(void const*), void const* closure)
    {
        std::lock_guard<std::mutex> oneLaunchAtATime(mLaunchMutex);
        std::unique_lock<std::mutex> lock(mMutex);
        try
        {
            while (mWorkers.size() < grid.threads)
            {
                mWorkers.emplace_back(&Pool::work, this, static_cast<unsigned>(mWorkers.size()));
            }
        }
        catch (std::system_error const&)
        {
            fatal("could not start a thread per CUDA thread");
        }
        mGrid = &grid;
        mBody = body;
        mClosure = closure;
        mRunning = grid.threads;
        ++mLaunch;
        mStart.notify_all();
        mDone.wait(lock, [&] { return mRunning == 0; });
        mGrid = nullptr;
    }

private:
    Pool() = default;

    void work(unsigned linear)
    {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mMutex);
        while (true)
        {
            mStart.wait(lock, [&] { return mStop || (mLaunch != seen && mGrid != nullptr); });
            if (mStop)
            {
                return;
            }
            seen = mLaunch;
            if (linear >= mGrid->threads)
            {
                continue;
            }
            Grid& grid = *mGrid;
            lock.unlock();
            runThread(grid, linear, mBody, mClosure);
            lock.lock();
            if (--mRunning == 0)
            {
                mDone.notify_one();
            }
        }
    }

    std::mutex mLaunchMutex;
    std::mutex mMutex;
    std::condition_variable mStart;
    std::condition_variable mDone;
    std::vector<std::thread> mWorkers;
    Grid* mGrid{nullptr};
    void (*mBody)(void const*){nullptr};
    void const* mClosure{nullptr};
    unsigned mRunning{0};
    uint64_t mLaunch{0};
    bool mStop{false};
};

} // namespace

void runGrid(
    dim3 grid, dim3 block, std::size_t sharedBytes, cudaStream_t /*stream: runs now*/, void (*body)(void const*),
    void const* closure)
{
    if (tGrid != nullptr)
    {
        fatal("a kernel launched another kernel (dynamic parallelism is not emulated)");
    }
    uint64_t const threads = static_cast<uint64_t>(block.x) * block.y * block.z;
    if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0
        || grid.x > static_cast<unsigned>(INT_MAX) || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    {
        tLastError = cudaErrorInvalidConfiguration;
        return;
    }
    if (sharedBytes != 0)
    {
        fatal("dynamic shared memory is not emulated");
    }
    Grid state(grid, block);
    Pool::instance().run(state, body, closure);
}

void syncthreads()
{
    currentGrid().blockBarrier.wait();
}

void syncwarp(unsigned mask)
{
    currentWarp(mask).barrier.wait();
}

void exchange(unsigned mask, void const* value, void* out, std::size_t bytes, int sourceLane)
{
    Warp& warp = currentWarp(mask);
    if (sourceLane < 0 || static_cast<unsigned>(sourceLane) >= warp.lanes)
    {
        fatal("shuffle from a lane outside the warp");
    }
    std::memcpy(&warp.slots[laneId()], value, bytes);
    warp.barrier.wait(); // every lane has published its value
    std::memcpy(out, &warp.slots[sourceLane], bytes);
    warp.barrier.wait(); // every lane has read before any lane publishes again
}

int laneId()
{
    return static_cast<int>(tLinearThread % kWarpSize);
}

} // namespace cuda_host

cudaError_t cudaGetLastError()
{
    cudaError_t const error = cuda_host::tLastError;
    cuda_host::tLastError = cudaSuccess;
    return error;
}

cudaError_t cudaPeekAtLastError()
{
    return cuda_host::tLastError;
}

char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unrecognized error code";
    }
}
