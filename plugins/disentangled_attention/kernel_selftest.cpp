/*
 * Stand-alone check of the DisentangledAttention kernel through its C entry point.
 *
 * Small shapes (odd sizes, Sq != Sk, tiny spans, more than 65535 leading rows), several
 * relative-position tables (linear, a monotone log-like one, a random non-monotone one
 * with out-of-range values, one shorter than 2*S - 1), each positional input present or
 * absent, fp32 / fp16 / bf16, in place (out == c2c) and not. Buffers are allocated at
 * their exact sizes so compute-sanitizer memcheck sees any out-of-bounds access; outputs
 * are poisoned with NaN before each launch. The CPU reference does the same float32
 * operations in the same order (compiled without FMA contraction) and rounds to the I/O
 * type, so every output must match bit for bit.
 *
 * Usage: debertrt_kernel_selftest [--quick]
 * Exit: 0 all passed, 1 a mismatch or CUDA error, 2 no CUDA device.
 */
#include "disentangled_attention_kernel.cuh"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace
{

struct Rng
{
    uint64_t state;
    uint32_t next()
    {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return static_cast<uint32_t>(state >> 33);
    }
    float uniform() // [-1, 1)
    {
        return static_cast<float>(next() & 0xFFFFFF) / 8388608.0F - 1.0F;
    }
};

enum class Table
{
    kLinear,
    kLogLike,
    kRandom,
    kShort
};

char const* tableName(Table t)
{
    switch (t)
    {
    case Table::kLinear: return "linear";
    case Table::kLogLike: return "loglike";
    case Table::kRandom: return "random";
    case Table::kShort: return "short";
    }
    return "?";
}

std::vector<int32_t> makeTable(Table kind, int32_t smax, int32_t span, Rng& rng)
{
    int32_t const n = kind == Table::kShort ? (smax > 2 ? smax : 1) : 2 * smax - 1;
    int32_t const center = (n + 1) / 2 - 1;
    std::vector<int32_t> table(static_cast<size_t>(n));
    for (int32_t k = 0; k < n; ++k)
    {
        int32_t const r = k - center;
        int32_t const a = r < 0 ? -r : r;
        int32_t value = r;
        if (kind == Table::kLogLike && a > 4)
        {
            value = (r < 0 ? -1 : 1) * (4 + static_cast<int32_t>(std::floor(std::log2(a / 4.0) * 3.0)));
        }
        else if (kind == Table::kRandom)
        {
            value = static_cast<int32_t>(rng.next() % static_cast<uint32_t>(6 * span + 1)) - 3 * span;
        }
        table[static_cast<size_t>(k)] = value;
    }
    return table;
}

//! Each element type's code at the C entry point and name in reports (the primary templates: float's).
template <typename T>
constexpr int kTypeCode = DEBERTRT_DTYPE_FLOAT32;
template <>
constexpr int kTypeCode<__half> = DEBERTRT_DTYPE_FLOAT16;
template <>
constexpr int kTypeCode<__nv_bfloat16> = DEBERTRT_DTYPE_BFLOAT16;
template <typename T>
constexpr char const* kTypeName = "fp32";
template <>
constexpr char const* kTypeName<__half> = "fp16";
template <>
constexpr char const* kTypeName<__nv_bfloat16> = "bf16";

//! Conversions of the I/O types; __half and __nv_bfloat16 convert from float rounding to nearest
//! even, as __float2half_rn and __float2bfloat16_rn do.
template <typename T>
float toFloat(T v)
{
    return static_cast<float>(v);
}
template <typename T>
T fromFloat(float v)
{
    return static_cast<T>(v);
}

struct Case
{
    int64_t rows;
    int32_t sq;
    int32_t sk;
    int32_t span;
    Table table;
    bool c2p;
    bool p2c;
    bool inPlace;
};

int gFailures = 0;
int gCases = 0;

bool check(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(status));
        ++gFailures;
        return false;
    }
    return true;
}

template <typename T>
T* deviceCopy(std::vector<T> const& host)
{
    if (host.empty())
    {
        return nullptr;
    }
    void* ptr = nullptr;
    if (!check(cudaMalloc(&ptr, host.size() * sizeof(T)), "cudaMalloc"))
    {
        return nullptr;
    }
    check(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    return static_cast<T*>(ptr);
}

template <typename T>
void runCase(Case const& cs, Rng& rng)
{
    ++gCases;
    int64_t const width = 2 * static_cast<int64_t>(cs.span);
    int32_t const smax = cs.sq > cs.sk ? cs.sq : cs.sk;
    std::vector<int32_t> const table = makeTable(cs.table, smax + 3, cs.span, rng);
    int32_t const tableLen = static_cast<int32_t>(table.size());

    auto fill = [&rng](size_t n) {
        std::vector<T> v(n);
        for (auto& x : v)
        {
            x = fromFloat<T>(rng.uniform() * 4.0F);
        }
        return v;
    };
    std::vector<T> const c2c = fill(static_cast<size_t>(cs.rows * cs.sq * cs.sk));
    std::vector<T> const c2p = cs.c2p ? fill(static_cast<size_t>(cs.rows * cs.sq * width)) : std::vector<T>{};
    std::vector<T> const p2c = cs.p2c ? fill(static_cast<size_t>(cs.rows * cs.sk * width)) : std::vector<T>{};
    float const posScale = 0.37F;

    // CPU reference, the spec's formula in float32, rounded to T.
    std::vector<T> expected(c2c.size());
    int64_t const center = (static_cast<int64_t>(tableLen) + 1) / 2 - 1;
    for (int64_t b = 0; b < cs.rows; ++b)
    {
        for (int64_t i = 0; i < cs.sq; ++i)
        {
            for (int64_t j = 0; j < cs.sk; ++j)
            {
                int64_t idx = i - j + center;
                idx = idx < 0 ? 0 : (idx >= tableLen ? tableLen - 1 : idx);
                int64_t delta = static_cast<int64_t>(table[static_cast<size_t>(idx)]) + cs.span;
                delta = delta < 0 ? 0 : (delta >= width ? width - 1 : delta);
                float pos = 0.0F;
                if (cs.c2p)
                {
                    pos = pos + toFloat(c2p[static_cast<size_t>((b * cs.sq + i) * width + delta)]);
                }
                if (cs.p2c)
                {
                    pos = pos + toFloat(p2c[static_cast<size_t>((b * cs.sk + j) * width + delta)]);
                }
                size_t const o = static_cast<size_t>((b * cs.sq + i) * cs.sk + j);
                float const scaled = posScale * pos;
                expected[o] = fromFloat<T>(toFloat(c2c[o]) + scaled);
            }
        }
    }

    T* dC2c = deviceCopy(c2c);
    T* dC2p = deviceCopy(c2p);
    T* dP2c = deviceCopy(p2c);
    int32_t* dTable = deviceCopy(table);
    T* dOut = dC2c;
    if (!cs.inPlace)
    {
        void* ptr = nullptr;
        check(cudaMalloc(&ptr, c2c.size() * sizeof(T)), "cudaMalloc out");
        dOut = static_cast<T*>(ptr);
        check(cudaMemset(dOut, 0xFF, c2c.size() * sizeof(T)), "poison out"); // all-ones bits: NaN
    }

    int const rc = debertrt_disentangled_attention(kTypeCode<T>, dC2c, dC2p, dP2c, dTable, tableLen, dOut, cs.rows,
        cs.sq, cs.sk, cs.span, posScale, nullptr);
    bool ok = check(static_cast<cudaError_t>(rc), "debertrt_disentangled_attention")
        && check(cudaDeviceSynchronize(), "kernel");

    std::vector<T> got(c2c.size());
    if (ok)
    {
        ok = check(cudaMemcpy(got.data(), dOut, got.size() * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    }
    if (ok)
    {
        size_t bad = 0;
        size_t firstBad = 0;
        for (size_t o = 0; o < got.size(); ++o)
        {
            if (std::memcmp(&got[o], &expected[o], sizeof(T)) != 0)
            {
                if (bad++ == 0)
                {
                    firstBad = o;
                }
            }
        }
        if (bad != 0)
        {
            ++gFailures;
            std::fprintf(stderr,
                "FAIL %s rows=%lld sq=%d sk=%d span=%d table=%s c2p=%d p2c=%d inplace=%d: %zu/%zu differ, first at "
                "%zu: got %g expected %g\n",
                kTypeName<T>, static_cast<long long>(cs.rows), cs.sq, cs.sk, cs.span, tableName(cs.table),
                cs.c2p ? 1 : 0, cs.p2c ? 1 : 0, cs.inPlace ? 1 : 0, bad, got.size(), firstBad,
                static_cast<double>(toFloat(got[firstBad])),
                static_cast<double>(toFloat(expected[firstBad])));
        }
    }
    if (!cs.inPlace)
    {
        cudaFree(dOut);
    }
    cudaFree(dC2c);
    cudaFree(dC2p);
    cudaFree(dP2c);
    cudaFree(dTable);
}

void checkInvalidArguments()
{
    // Argument errors come back as cudaErrorInvalidValue without touching the device.
    int32_t const table[1] = {0};
    struct Bad
    {
        char const* what;
        int rc;
    };
    float a = 0.0F; // distinct dummies: c2c, positional, out
    float p = 0.0F;
    float o = 0.0F;
    Bad const bad[] = {
        {"null c2c", debertrt_disentangled_attention(0, nullptr, &p, nullptr, table, 1, &o, 1, 1, 1, 1, 1.0F, nullptr)},
        {"no positional input",
            debertrt_disentangled_attention(0, &a, nullptr, nullptr, table, 1, &o, 1, 1, 1, 1, 1.0F, nullptr)},
        {"unknown dtype", debertrt_disentangled_attention(7, &a, &p, nullptr, table, 1, &o, 1, 1, 1, 1, 1.0F, nullptr)},
        {"span 0", debertrt_disentangled_attention(0, &a, &p, nullptr, table, 1, &o, 1, 1, 1, 0, 1.0F, nullptr)},
        {"empty table", debertrt_disentangled_attention(0, &a, &p, nullptr, table, 0, &o, 1, 1, 1, 1, 1.0F, nullptr)},
        {"sq 0", debertrt_disentangled_attention(0, &a, &p, nullptr, table, 1, &o, 1, 0, 1, 1, 1.0F, nullptr)},
        {"negative rows", debertrt_disentangled_attention(0, &a, &p, nullptr, table, 1, &o, -1, 1, 1, 1, 1.0F, nullptr)},
        {"out aliases c2p", debertrt_disentangled_attention(0, &a, &p, nullptr, table, 1, &p, 1, 1, 1, 1, 1.0F, nullptr)},
        {"out aliases p2c", debertrt_disentangled_attention(0, &a, nullptr, &p, table, 1, &p, 1, 1, 1, 1, 1.0F, nullptr)},
    };
    for (Bad const& b : bad)
    {
        ++gCases;
        if (b.rc != static_cast<int>(cudaErrorInvalidValue))
        {
            ++gFailures;
            std::fprintf(stderr, "FAIL invalid arguments (%s): got %d, expected cudaErrorInvalidValue\n", b.what, b.rc);
        }
    }
    ++gCases;
    if (debertrt_disentangled_attention(0, nullptr, nullptr, nullptr, nullptr, 0, nullptr, 0, 0, 0, 0, 1.0F, nullptr)
        != 0)
    {
        ++gFailures;
        std::fprintf(stderr, "FAIL rows == 0 must be a no-op success\n");
    }
    if (debertrt_kernel_abi_version() != DEBERTRT_KERNEL_ABI_VERSION)
    {
        ++gFailures;
        std::fprintf(stderr, "FAIL ABI version mismatch\n");
    }
}

} // namespace

int main(int argc, char** argv)
{
    bool quick = false;
    for (int a = 1; a < argc; ++a)
    {
        if (std::string(argv[a]) == "--quick")
        {
            quick = true;
        }
        else
        {
            std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
            return 2;
        }
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    {
        std::fprintf(stderr, "no CUDA device\n");
        return 2;
    }

    checkInvalidArguments();

    struct Shape
    {
        int64_t rows;
        int32_t sq, sk, span;
    };
    std::vector<Shape> shapes = {{1, 1, 1, 1}, {3, 7, 7, 4}, {2, 33, 65, 16}, {2, 65, 33, 40}, {1, 64, 64, 32},
        {2, 100, 37, 8}, {1, 31, 97, 3}, {5, 2, 2, 1}};
    if (!quick)
    {
        shapes.push_back({70000, 2, 3, 2}); // more leading rows than gridDim.y allows
        shapes.push_back({2, 257, 257, 64});
    }
    std::vector<Table> tables = {Table::kLinear, Table::kLogLike, Table::kRandom, Table::kShort};
    if (quick)
    {
        tables = {Table::kLinear, Table::kRandom, Table::kShort};
    }
    bool const presence[3][2] = {{true, true}, {true, false}, {false, true}};

    Rng rng{12345};
    for (Shape const& s : shapes)
    {
        for (Table t : tables)
        {
            for (auto const& pr : presence)
            {
                for (bool inPlace : {false, true})
                {
                    if (inPlace && (quick || t != Table::kLinear))
                    {
                        continue;
                    }
                    Case const cs{s.rows, s.sq, s.sk, s.span, t, pr[0], pr[1], inPlace};
                    runCase<float>(cs, rng);
                    runCase<__half>(cs, rng);
                    if (!quick)
                    {
                        runCase<__nv_bfloat16>(cs, rng);
                    }
                }
            }
        }
    }
    if (quick)
    {
        Case const cs{2, 33, 65, 16, Table::kLogLike, true, true, false};
        runCase<__nv_bfloat16>(cs, rng);
    }

    std::printf("%s: %d checks, %d failed\n", gFailures == 0 ? "PASS" : "FAIL", gCases, gFailures);
    return gFailures == 0 ? 0 : 1;
}
