/*
 * DisentangledFlashAttention launcher: see flash_launcher.h. The one place that maps (dtype, head
 * dim, presence, GPU) to a compiled kernel and marshals the kernel's arguments.
 */
#include "flash_launcher.h"

#include <algorithm>
#include <climits>
#include <iterator>
#include <mutex>
#include <sstream>
#include <vector>

namespace debertrt
{
namespace flash
{
namespace
{
#include "flash_cubins.inc"

constexpr size_t kNbVariants = sizeof(kFlashVariants) / sizeof(kFlashVariants[0]);
constexpr double kLog2e = 1.4426950408889634; // the kernel works in exp2: scores carry log2(e)
constexpr int32_t kDefaultSharedLimit = 48 * 1024; // above this a kernel must opt in
constexpr int64_t kHeadDimMultiple = 16;            // the kernels assume 16-divisible strides

// The argument order below, as the kernel's parameter list the generator read from the compiled
// kernel: a kernel with other parameters does not compile here. Triton's hidden scratch pointers
// (DEBERTRT_FLASH_HIDDEN_POINTERS of them, triton 3.9: two) follow, passed as null: the generator
// refuses kernels that need scratch memory.
constexpr char const kLaunchOrder[] = "Q,K,V,PK,PQ,MASK,TABLE,sqb,sqh,sqs,skb,skh,sks,svb,svh,svs,spkh,spkr,spqh,"
                                      "spqr,smb,sob,sos,H,S,D,P,SMAX,M_TILES,c2c_factor,c2p_factor,p2c_factor,OUT";
constexpr bool sameText(char const* a, char const* b)
{
    return *a == *b && (*a == '\0' || sameText(a + 1, b + 1));
}
static_assert(sameText(DEBERTRT_FLASH_KERNEL_PARAMETERS, kLaunchOrder),
    "flash_cubins.inc was generated from a kernel whose parameters differ from this launcher's arguments");
static_assert(DEBERTRT_FLASH_HIDDEN_POINTERS >= 0 && DEBERTRT_FLASH_HIDDEN_POINTERS <= 2,
    "the launcher passes at most two hidden pointers");

//! Every value the kernel takes, in kLaunchOrder.
struct KernelArgs
{
    void const* q;
    void const* k;
    void const* v;
    void const* posKey;
    void const* posQuery;
    void const* mask;
    void const* table;
    int32_t sqb, sqh, sqs, skb, skh, sks, svb, svh, svs;
    int32_t spkh, spkr, spqh, spqr, smb, sob, sos;
    int32_t heads, seq, headDim, span, smax, mTiles;
    float c2cFactor, c2pFactor, p2cFactor;
    void* out;
    void* hidden[2]; //!< Triton's scratch pointers: null (the first DEBERTRT_FLASH_HIDDEN_POINTERS are parameters)
};

struct Loaded
{
    cudaLibrary_t library{nullptr};
    cudaKernel_t kernel{nullptr};
    unsigned long long sharedOptIn{0}; //!< devices (bit per ordinal < 64) where the shared-memory limit was raised
};

std::mutex gMutex;
Loaded gLoaded[kNbVariants > 0 ? kNbVariants : 1];

char const* dtypeName(int32_t dtype) noexcept
{
    switch (dtype)
    {
    case DEBERTRT_DTYPE_FLOAT32: return "float32";
    case DEBERTRT_DTYPE_FLOAT16: return "float16";
    case DEBERTRT_DTYPE_BFLOAT16: return "bfloat16";
    default: return "an unknown dtype";
    }
}

bool fitsInt32(int64_t value) noexcept
{
    return value >= 0 && value <= INT32_MAX;
}

std::string cudaMessage(std::string const& call, cudaError_t status)
{
    return call + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
}

//! "sm_80, sm_90 x float16, bfloat16 x head dims <= 32, 64, 128" for messages.
std::string holdings()
{
    std::vector<int32_t> archs, dtypes, blocks;
    auto add = [](std::vector<int32_t>& list, int32_t value) {
        for (int32_t seen : list)
        {
            if (seen == value)
            {
                return;
            }
        }
        list.push_back(value);
    };
    for (FlashVariant const& v : kFlashVariants)
    {
        add(archs, v.arch);
        add(dtypes, v.dtype);
        add(blocks, v.blockD);
    }
    std::ostringstream s;
    for (size_t i = 0; i < archs.size(); ++i)
    {
        s << (i != 0 ? ", " : "") << "sm_" << archs[i];
    }
    s << " x ";
    for (size_t i = 0; i < dtypes.size(); ++i)
    {
        s << (i != 0 ? ", " : "") << dtypeName(dtypes[i]);
    }
    s << " x head dims <= ";
    for (size_t i = 0; i < blocks.size(); ++i)
    {
        s << (i != 0 ? ", " : "") << blocks[i];
    }
    return s.str();
}

//! The current device's ordinal and compute capability.
cudaError_t currentDevice(int& device, int& major, int& minor, std::string& why) noexcept
{
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    }
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    }
    if (status != cudaSuccess)
    {
        why = cudaMessage("querying the current CUDA device", status);
    }
    return status;
}

//! The loaded kernel of `variant` with its shared-memory limit raised on `device` if it needs more than
//! the default; loads it on first use. Caller holds gMutex.
cudaError_t loadLocked(size_t index, int device, cudaKernel_t& kernel, std::string& why) noexcept
{
    FlashVariant const& variant = kFlashVariants[index];
    Loaded& loaded = gLoaded[index];
    if (loaded.kernel == nullptr)
    {
        cudaError_t status = cudaLibraryLoadData(&loaded.library, variant.cubinBegin, nullptr, nullptr, 0, nullptr,
            nullptr, 0);
        if (status == cudaSuccess)
        {
            status = cudaLibraryGetKernel(&loaded.kernel, loaded.library, variant.kernelName);
        }
        if (status != cudaSuccess)
        {
            why = cudaMessage("loading the sm_" + std::to_string(variant.arch) + " kernel", status)
                + " (a driver older than the CUDA version Triton compiled for?)";
            if (loaded.library != nullptr)
            {
                cudaLibraryUnload(loaded.library); // the next launch tries again from scratch
            }
            loaded = Loaded{};
            return status;
        }
    }
    if (variant.sharedBytes > kDefaultSharedLimit && device < 64 && ((loaded.sharedOptIn >> device) & 1ULL) == 0)
    {
        int limit = 0;
        cudaError_t status = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
        if (status == cudaSuccess && limit < variant.sharedBytes)
        {
            why = "the kernel needs " + std::to_string(variant.sharedBytes) + " bytes of shared memory per block, "
                + "this GPU allows " + std::to_string(limit);
            return cudaErrorInvalidConfiguration;
        }
        if (status == cudaSuccess)
        {
            status = cudaKernelSetAttributeForDevice(
                loaded.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, variant.sharedBytes, device);
        }
        if (status != cudaSuccess)
        {
            why = cudaMessage("raising the kernel's shared-memory limit", status);
            return status;
        }
        loaded.sharedOptIn |= 1ULL << device;
    }
    kernel = loaded.kernel;
    return cudaSuccess;
}

//! Select the variant for the current device and load it.
cudaError_t kernelFor(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, FlashVariant const*& variant,
    cudaKernel_t& kernel, std::string& why) noexcept
{
    int device = 0;
    int major = 0;
    int minor = 0;
    cudaError_t status = currentDevice(device, major, minor, why);
    if (status != cudaSuccess)
    {
        return status;
    }
    variant = findVariant(dtype, headDim, hasC2p, hasP2c, major, minor);
    if (variant == nullptr)
    {
        why = whyNoVariant(dtype, headDim, hasC2p, hasP2c, major, minor);
        return cudaErrorNoKernelImageForDevice;
    }
    std::lock_guard<std::mutex> const lock(gMutex);
    return loadLocked(static_cast<size_t>(variant - kFlashVariants), device, kernel, why);
}

//! The kernel's arguments for launching `v` on validated arguments `a`; `programs`: the grid size.
KernelArgs kernelArgs(FlashAttentionArgs const& a, FlashVariant const& v, int64_t& programs) noexcept
{
    auto const i32 = [](int64_t value) { return static_cast<int32_t>(value); };
    int64_t const h = a.heads, s = a.seq, d = a.headDim, rows = a.positionRows;
    int64_t const mTiles = (s + v.blockM - 1) / v.blockM;
    programs = a.batch * h * mTiles;
    return KernelArgs{a.q, a.k, a.v, a.posKey, a.posQuery, a.mask, a.relTable,
        i32(h * s * d), i32(s * d), i32(d), i32(h * s * d), i32(s * d), i32(d), i32(h * s * d), i32(s * d), i32(d),
        a.posKey != nullptr ? i32(rows * d) : 0, a.posKey != nullptr ? i32(d) : 0,
        a.posQuery != nullptr ? i32(rows * d) : 0, a.posQuery != nullptr ? i32(d) : 0,
        i32(s), i32(s * h * d), i32(h * d),
        i32(h), i32(s), i32(d), i32(rows / 2), i32((a.relTableLen + 1) / 2), i32(mTiles),
        static_cast<float>(static_cast<double>(a.qScale) * a.kScale * kLog2e),
        static_cast<float>(static_cast<double>(a.qScale) * a.posScale * kLog2e),
        static_cast<float>(static_cast<double>(a.posScale) * kLog2e), a.out, {nullptr, nullptr}};
}

} // namespace

size_t variantCount() noexcept
{
    return kNbVariants;
}

FlashVariant const& variantAt(size_t index) noexcept
{
    return kFlashVariants[index < kNbVariants ? index : 0];
}

FlashVariant const* findVariant(
    int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, int32_t major, int32_t minor) noexcept
{
    FlashVariant const* best = nullptr;
    for (FlashVariant const& v : kFlashVariants)
    {
        bool const fits = v.dtype == dtype && headDim <= v.blockD && (v.hasC2p != 0) == hasC2p
            && (v.hasP2c != 0) == hasP2c;
        // SASS runs on its own major version at an equal or higher minor one.
        bool const runs = major < 0 || (v.arch / 10 == major && v.arch % 10 <= minor);
        if (fits && runs
            && (best == nullptr || v.blockD < best->blockD || (v.blockD == best->blockD && v.arch > best->arch)))
        {
            best = &v;
        }
    }
    return best;
}

std::string whyNoVariant(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, int32_t major, int32_t minor)
{
    if (findVariant(dtype, headDim, hasC2p, hasP2c, major, minor) != nullptr)
    {
        return {};
    }
    std::string const what = std::string{dtypeName(dtype)} + ", head dim " + std::to_string(headDim) + ", "
        + (hasC2p && hasP2c ? "c2p and p2c" : hasC2p ? "c2p only" : "p2c only");
    std::string const where = major < 0 ? std::string{}
                                        : " on sm_" + std::to_string(major) + std::to_string(minor);
    return "this library has no DisentangledFlashAttention kernel for " + what + where + " (it holds " + holdings()
        + "; rebuild it with DEBERTRT_FLASH_ARCHS, DEBERTRT_FLASH_DTYPES, DEBERTRT_FLASH_HEAD_DIMS covering that)";
}

std::string checkHeadDim(int64_t headDim)
{
    if (headDim < kHeadDimMultiple || headDim % kHeadDimMultiple != 0 || headDim > 128)
    {
        return "head dim " + std::to_string(headDim) + " is not a multiple of 16 in 16..128: the compiled kernels "
            + "assume 16-divisible strides (every DeBERTa has head dim 64)";
    }
    return {};
}

std::string checkServable(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c)
{
    std::string why = checkHeadDim(headDim);
    if (!why.empty())
    {
        return why;
    }
    int device = 0;
    int major = -1;
    int minor = 0;
    std::string ignored;
    if (currentDevice(device, major, minor, ignored) != cudaSuccess)
    {
        major = -1; // no usable device (a host-only check): any architecture will do
        cudaGetLastError();
    }
    return whyNoVariant(dtype, headDim, hasC2p, hasP2c, major, minor);
}

std::string validate(int32_t dtype, FlashAttentionArgs const& a)
{
    bool const hasC2p = a.posKey != nullptr;
    bool const hasP2c = a.posQuery != nullptr;
    if (a.batch < 0 || a.heads < 0 || a.seq < 0 || a.headDim < 0)
    {
        return "negative dimension";
    }
    if (a.batch == 0 || a.heads == 0 || a.seq == 0)
    {
        return {}; // nothing to do
    }
    if (a.q == nullptr || a.k == nullptr || a.v == nullptr || a.mask == nullptr || a.relTable == nullptr
        || a.out == nullptr)
    {
        return "q, k, v, mask, rel_table and out must not be null";
    }
    if (!hasC2p && !hasP2c)
    {
        return "needs at least one of pos_key (c2p) and pos_query (p2c)";
    }
    std::string const headDimProblem = checkHeadDim(a.headDim);
    if (!headDimProblem.empty())
    {
        return headDimProblem;
    }
    if (a.positionRows < 2 || a.positionRows % 2 != 0)
    {
        return "pos_key/pos_query need an even number of rows 2P >= 2, got " + std::to_string(a.positionRows);
    }
    if (a.relTableLen < 1 || a.relTableLen % 2 == 0 || a.seq > (a.relTableLen + 1) / 2)
    {
        return "rel_table has " + std::to_string(a.relTableLen) + " entries; sequences of length "
            + std::to_string(a.seq) + " need an odd length >= " + std::to_string(2 * a.seq - 1);
    }
    std::string const missing = whyNoVariant(dtype, a.headDim, hasC2p, hasP2c, -1, 0);
    if (!missing.empty())
    {
        return missing;
    }
    FlashVariant const* v = findVariant(dtype, a.headDim, hasC2p, hasP2c, -1, 0);
    int64_t const mTiles = (a.seq + v->blockM - 1) / v->blockM;
    if (!fitsInt32(a.heads * a.seq * a.headDim) || !fitsInt32(a.positionRows * a.headDim)
        || !fitsInt32(a.batch * a.heads * mTiles) || !fitsInt32(a.relTableLen))
    {
        return "tensors too large for the kernel's 32-bit strides or grid";
    }
    for (void const* p : {a.q, a.k, a.v, a.posKey, a.posQuery, static_cast<void const*>(a.mask),
             static_cast<void const*>(a.relTable), static_cast<void const*>(a.out)})
    {
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        {
            return "every tensor must be 16-byte aligned (the kernels are compiled for aligned pointers)";
        }
    }
    for (void const* p : {a.q, a.k, a.v, a.posKey, a.posQuery})
    {
        if (p == a.out)
        {
            return "out must not be one of the inputs";
        }
    }
    return {};
}

cudaError_t prepare(int32_t dtype, int64_t headDim, bool hasC2p, bool hasP2c, std::string& why) noexcept
{
    try
    {
        FlashVariant const* variant = nullptr;
        cudaKernel_t kernel = nullptr;
        return kernelFor(dtype, headDim, hasC2p, hasP2c, variant, kernel, why);
    }
    catch (...)
    {
        return cudaErrorMemoryAllocation; // a message could not be built
    }
}

cudaError_t flashAttention(int32_t dtype, FlashAttentionArgs const& a, cudaStream_t stream, std::string& why) noexcept
{
    try
    {
        why = validate(dtype, a);
        if (!why.empty())
        {
            return cudaErrorInvalidValue;
        }
        if (a.batch == 0 || a.heads == 0 || a.seq == 0)
        {
            return cudaSuccess;
        }
        FlashVariant const* v = nullptr;
        cudaKernel_t kernel = nullptr;
        cudaError_t status = kernelFor(dtype, a.headDim, a.posKey != nullptr, a.posQuery != nullptr, v, kernel, why);
        if (status != cudaSuccess)
        {
            return status;
        }
        int64_t programs = 0;
        KernelArgs k = kernelArgs(a, *v, programs);
        void* params[] = {&k.q, &k.k, &k.v, &k.posKey, &k.posQuery, &k.mask, &k.table, &k.sqb, &k.sqh, &k.sqs,
            &k.skb, &k.skh, &k.sks, &k.svb, &k.svh, &k.svs, &k.spkh, &k.spkr, &k.spqh, &k.spqr, &k.smb, &k.sob, &k.sos,
            &k.heads, &k.seq, &k.headDim, &k.span, &k.smax, &k.mTiles, &k.c2cFactor, &k.c2pFactor, &k.p2cFactor,
            &k.out, &k.hidden[0], &k.hidden[1]}; // the kernel reads as many as it has
        dim3 const grid(static_cast<unsigned>(programs));
        dim3 const block(static_cast<unsigned>(v->numWarps * 32));
        status = cudaLaunchKernel(reinterpret_cast<void const*>(kernel), grid, block, params,
            static_cast<size_t>(v->sharedBytes), stream);
        if (status != cudaSuccess)
        {
            why = cudaMessage("cudaLaunchKernel", status);
            cudaGetLastError(); // leave no launch error behind for the caller's next check
        }
        return status;
    }
    catch (...)
    {
        return cudaErrorMemoryAllocation; // a message could not be built
    }
}

} // namespace flash
} // namespace debertrt

namespace
{
thread_local std::string gLastError;

debertrt::flash::FlashAttentionArgs argsOf(void const* q, void const* k, void const* v, void const* posKey,
    void const* posQuery, int32_t const* mask, int32_t const* relTable, int64_t relTableLen, void* out, int64_t batch,
    int64_t heads, int64_t seq, int64_t headDim, int64_t positionRows, float qScale, float kScale, float posScale)
{
    return debertrt::flash::FlashAttentionArgs{q, k, v, posKey, posQuery, mask, relTable, relTableLen, out, batch, heads,
        seq, headDim, positionRows, qScale, kScale, posScale};
}

int finish(cudaError_t status, std::string const& why) noexcept
{
    try
    {
        gLastError = why;
    }
    catch (...)
    {
        gLastError.clear();
    }
    return static_cast<int>(status);
}
} // namespace

extern "C"
{
    int debertrt_flash_attention(int dtype, void const* q, void const* k, void const* v, void const* pos_key,
        void const* pos_query, int32_t const* mask, int32_t const* rel_table, int64_t rel_table_len, void* out,
        int64_t batch, int64_t heads, int64_t seq, int64_t head_dim, int64_t position_rows, float q_scale,
        float k_scale, float pos_scale, void* stream)
    {
        debertrt::flash::FlashAttentionArgs const args = argsOf(q, k, v, pos_key, pos_query, mask, rel_table,
            rel_table_len, out, batch, heads, seq, head_dim, position_rows, q_scale, k_scale, pos_scale);
        std::string why;
        cudaError_t const status
            = debertrt::flash::flashAttention(dtype, args, static_cast<cudaStream_t>(stream), why);
        return finish(status, why);
    }

    int debertrt_flash_kernel_arguments(int dtype, void const* q, void const* k, void const* v, void const* pos_key,
        void const* pos_query, int32_t const* mask, int32_t const* rel_table, int64_t rel_table_len, void* out,
        int64_t batch, int64_t heads, int64_t seq, int64_t head_dim, int64_t position_rows, float q_scale,
        float k_scale, float pos_scale, int32_t* ints, float* floats, int64_t* launch)
    {
        debertrt::flash::FlashAttentionArgs const a = argsOf(q, k, v, pos_key, pos_query, mask, rel_table,
            rel_table_len, out, batch, heads, seq, head_dim, position_rows, q_scale, k_scale, pos_scale);
        std::string why = debertrt::flash::validate(dtype, a);
        if (!why.empty() || batch == 0 || heads == 0 || seq == 0)
        {
            return finish(why.empty() ? cudaSuccess : cudaErrorInvalidValue, why.empty() ? "nothing to launch" : why);
        }
        debertrt::flash::FlashVariant const& variant
            = *debertrt::flash::findVariant(dtype, head_dim, pos_key != nullptr, pos_query != nullptr, -1, 0);
        int64_t programs = 0;
        debertrt::flash::KernelArgs const args = debertrt::flash::kernelArgs(a, variant, programs);
        int32_t const values[] = {args.sqb, args.sqh, args.sqs, args.skb, args.skh, args.sks, args.svb, args.svh,
            args.svs, args.spkh, args.spkr, args.spqh, args.spqr, args.smb, args.sob, args.sos, args.heads, args.seq,
            args.headDim, args.span, args.smax, args.mTiles};
        std::copy(std::begin(values), std::end(values), ints);
        floats[0] = args.c2cFactor;
        floats[1] = args.c2pFactor;
        floats[2] = args.p2cFactor;
        launch[0] = programs;
        launch[1] = variant.numWarps * 32;
        launch[2] = variant.sharedBytes;
        return finish(cudaSuccess, "");
    }

    char const* debertrt_flash_kernel_parameters(void)
    {
        return DEBERTRT_FLASH_KERNEL_PARAMETERS;
    }

    char const* debertrt_flash_last_error(void)
    {
        return gLastError.c_str();
    }

    int debertrt_flash_abi_version(void)
    {
        return DEBERTRT_FLASH_ABI_VERSION;
    }

    int debertrt_flash_variant_count(void)
    {
        return static_cast<int>(debertrt::flash::variantCount());
    }

    int debertrt_flash_variant(
        int index, int* arch, int* dtype, int* block_d, int* has_c2p, int* has_p2c, int* shared_bytes)
    {
        if (index < 0 || static_cast<size_t>(index) >= debertrt::flash::variantCount())
        {
            return 1;
        }
        debertrt::flash::FlashVariant const& v = debertrt::flash::variantAt(static_cast<size_t>(index));
        *arch = v.arch;
        *dtype = v.dtype;
        *block_d = v.blockD;
        *has_c2p = v.hasC2p;
        *has_p2c = v.hasP2c;
        *shared_bytes = v.sharedBytes;
        return 0;
    }
}
