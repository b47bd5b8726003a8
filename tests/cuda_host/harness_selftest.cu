// Checks of cuda_host itself, as CUDA source: __shared__ per block with __syncthreads, 2-D
// thread and block indices, a grid-stride loop, the four warp shuffles, launch errors.
// Prints "PASS: N checks" and exits 0, or names each failed check and exits 1.
// `harness_selftest divergent-block` / `divergent-warp` run a kernel whose barrier / shuffle
// one thread returns without reaching: the harness must abort with a message.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <vector>

namespace
{

constexpr int kBlockX = 32;
constexpr int kBlockY = 4;
constexpr int kThreads = kBlockX * kBlockY;

// Block b sums items b, b + gridDim.x, ... of `values` (grid-stride), tree-reduced in shared memory.
__global__ void blockSums(int const* values, int count, int* sums)
{
    __shared__ int partial[kThreads];
    int const t = static_cast<int>(threadIdx.x + blockDim.x * threadIdx.y);
    int sum = 0;
    for (int item = static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) * t; item < count;
         item += static_cast<int>(gridDim.x * blockDim.x * blockDim.y))
    {
        sum += values[item];
    }
    partial[t] = sum;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2)
    {
        if (t < half)
        {
            partial[t] += partial[t + half];
        }
        __syncthreads();
    }
    if (t == 0)
    {
        sums[blockIdx.x] = partial[0];
    }
}

// Four outputs per thread: xor-butterfly sum, broadcast of lane 5, up/down by 1 in
// 16-lane segments.
__global__ void shuffles(int* out)
{
    int const value = static_cast<int>(threadIdx.x) * 3 + 1;
    int sum = value;
    for (int mask = 16; mask > 0; mask /= 2)
    {
        sum += __shfl_xor_sync(0xffffffffU, sum, mask);
    }
    int* row = out + 4 * threadIdx.x;
    row[0] = sum;
    row[1] = __shfl_sync(0xffffffffU, value, 5);
    row[2] = __shfl_up_sync(0xffffffffU, value, 1, 16);
    row[3] = __shfl_down_sync(0xffffffffU, value, 1, 16);
}

__global__ void divergentBlock(int* out)
{
    if (threadIdx.x == 3)
    {
        return;
    }
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void divergentWarp(int* out)
{
    if (threadIdx.x == 3)
    {
        return;
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffU, static_cast<int>(threadIdx.x), 1);
}

int failures = 0;
int checks = 0;

void check(bool ok, char const* what, long got, long expected)
{
    ++checks;
    if (!ok)
    {
        ++failures;
        std::printf("FAIL %s: got %ld, expected %ld\n", what, got, expected);
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 2)
    {
        std::vector<int> out(64);
        if (std::strcmp(argv[1], "divergent-block") == 0)
        {
            divergentBlock<<<1, 64>>>(out.data());
        }
        else if (std::strcmp(argv[1], "divergent-warp") == 0)
        {
            divergentWarp<<<1, 64>>>(out.data());
        }
        std::printf("no divergence seen\n");
        return 1;
    }
    int const count = 1000;
    int const blocks = 3;
    std::vector<int> values(count);
    for (int i = 0; i < count; ++i)
    {
        values[i] = i * 7 % 13 - 6;
    }
    std::vector<int> sums(blocks, -1);
    blockSums<<<blocks, dim3(kBlockX, kBlockY), 0, nullptr>>>(values.data(), count, sums.data());
    check(cudaGetLastError() == cudaSuccess, "blockSums launch", 0, 0);
    for (int b = 0; b < blocks; ++b)
    {
        long expected = 0;
        for (int i = b; i < count; i += blocks)
        {
            expected += values[i];
        }
        check(sums[b] == expected, "block sum", sums[b], expected);
    }

    int const threads = 64;
    std::vector<int> out(4 * threads, -1);
    shuffles<<<1, threads>>>(out.data());
    check(cudaGetLastError() == cudaSuccess, "shuffles launch", 0, 0);
    for (int t = 0; t < threads; ++t)
    {
        int const warp0 = t / 32 * 32;
        long warpSum = 0;
        for (int l = 0; l < 32; ++l)
        {
            warpSum += (warp0 + l) * 3 + 1;
        }
        int const lane = t % 32;
        check(out[4 * t] == warpSum, "xor butterfly", out[4 * t], warpSum);
        check(out[4 * t + 1] == (warp0 + 5) * 3 + 1, "broadcast", out[4 * t + 1], (warp0 + 5) * 3 + 1);
        long const up = (lane % 16 >= 1 ? t - 1 : t) * 3 + 1;
        long const down = (lane % 16 + 1 < 16 ? t + 1 : t) * 3 + 1;
        check(out[4 * t + 2] == up, "shuffle up", out[4 * t + 2], up);
        check(out[4 * t + 3] == down, "shuffle down", out[4 * t + 3], down);
    }

    shuffles<<<1, 2048>>>(out.data()); // more threads than a block can have: runs nothing
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "oversized block", 0, 0);
    check(cudaGetLastError() == cudaSuccess, "error cleared once read", 0, 0);

    if (failures == 0)
    {
        std::printf("PASS: %d checks\n", checks);
    }
    return failures == 0 ? 0 : 1;
}
