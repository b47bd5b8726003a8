/*
 * Self-test of the DisentangledFlashAttention plugin's build and runtime methods (no GPU: no launch).
 * Inputs q, k, v [B, H, S, D], pos_key, pos_query [H, 2P, D], mask [B, S], rel_table [2*Smax - 1];
 * output [B, S, H*D]. Head dim 64 FP16 with both positional inputs is in every library build.
 */
#include "selftest.h"

#include <cstdio>

using namespace nvinfer1;

namespace selftest
{
namespace
{

constexpr char const* kValid = "q_scale=1,k_scale=0.0721687836,pos_scale=0.0721687836,has_c2p=1,has_p2c=1,"
                               "position_buckets=256,max_relative_positions=512";

//! q, k, v, pos_key, pos_query, mask, rel_table and the output, B=2 H=12 S=64 D=`headDim` 2P=512.
std::vector<DynamicPluginTensorDesc> flashIo(DataType type, int64_t headDim = 64)
{
    Dims const qkv = makeDims({2, 12, 64, headDim});
    Dims const pos = makeDims({12, 512, headDim});
    return {dynDesc(qkv, type), dynDesc(qkv, type), dynDesc(qkv, type), dynDesc(pos, type), dynDesc(pos, type),
        dynDesc(makeDims({2, 64}), DataType::kINT32), dynDesc(makeDims({1023}), DataType::kINT32),
        dynDesc(makeDims({2, 64, 12 * headDim}), type)};
}

//! configurePlugin on `io` (7 inputs + output); true when refused with an error containing `text`.
bool refused(IPluginV3OneBuild& build, RecordingLogger& logger, std::vector<DynamicPluginTensorDesc> const& io,
    char const* text)
{
    logger.clear();
    return build.configurePlugin(io.data(), 7, &io[7], 1) != 0 && logger.saw(ILogger::Severity::kERROR, text);
}

void checkFlash(IPluginCreatorV3One& creator, RecordingLogger& logger)
{
    Capabilities c;
    std::unique_ptr<IPluginV3> plugin = pluginToCheck(creator, kValid, "DisentangledFlashAttention", c);
    if (plugin == nullptr)
    {
        return;
    }
    IPluginV3OneBuild& build = *c.build;
    IPluginV3OneRuntime& runtime = *c.runtime;

    // ---- types ----
    DataType out = DataType::kFLOAT;
    auto types = [](DataType f) {
        return std::vector<DataType>{f, f, f, f, f, DataType::kINT32, DataType::kINT32};
    };
    expect(build.getOutputDataTypes(&out, 1, types(DataType::kHALF).data(), 7) == 0 && out == DataType::kHALF,
        "flash: FP16 in, FP16 out");
    expect(build.getOutputDataTypes(&out, 1, types(DataType::kBF16).data(), 7) == 0 && out == DataType::kBF16,
        "flash: BF16 in, BF16 out");
    logger.clear();
    expect(build.getOutputDataTypes(&out, 1, types(DataType::kFLOAT).data(), 7) != 0
            && logger.saw(ILogger::Severity::kERROR, "FP16 or BF16"),
        "flash: FP32 I/O refused with a logged error");
    std::vector<DataType> mixed = types(DataType::kHALF);
    mixed[2] = DataType::kBF16;
    expect(build.getOutputDataTypes(&out, 1, mixed.data(), 7) != 0, "flash: v of another type refused");
    mixed = types(DataType::kHALF);
    mixed[5] = DataType::kINT64;
    expect(build.getOutputDataTypes(&out, 1, mixed.data(), 7) != 0, "flash: INT64 mask refused");
    logger.clear();
    expect(build.getOutputDataTypes(&out, 1, mixed.data(), 6) != 0 && logger.saw(ILogger::Severity::kERROR, "expected 7"),
        "flash: wrong input count is a logged error");

    // ---- formats ----
    logger.clear();
    std::printf("dtypes DisentangledFlashAttention %s\n",
        acceptedTypes(build, 7, [](DataType type) { return flashIo(type); }).c_str());
    expect(logger.saw(ILogger::Severity::kWARNING, "FP16 or BF16"), "flash: FP32 q refused with a logged message");
    std::vector<DynamicPluginTensorDesc> io = flashIo(DataType::kHALF);
    io[5].desc.type = DataType::kHALF;
    expect(!build.supportsFormatCombination(5, io.data(), 7, 1), "flash: FP16 mask refused");
    io = flashIo(DataType::kHALF);
    io[7].desc.type = DataType::kBF16;
    expect(!build.supportsFormatCombination(7, io.data(), 7, 1), "flash: output of another type refused");
    io = flashIo(DataType::kHALF);
    io[1].desc.format = TensorFormat::kCHW32;
    expect(!build.supportsFormatCombination(1, io.data(), 7, 1), "flash: non-linear format refused");

    // ---- shapes ----
    ConstantExprBuilder exprs;
    DimsExprs inExprs[7] = {exprs.dims({2, 12, 64, 64}), exprs.dims({2, 12, 64, 64}), exprs.dims({2, 12, 64, 64}),
        exprs.dims({12, 512, 64}), exprs.dims({12, 512, 64}), exprs.dims({2, 64}), exprs.dims({1023})};
    DimsExprs outExprs[1]{};
    expect(build.getOutputShapes(inExprs, 7, nullptr, 0, outExprs, 1, exprs) == 0 && outExprs[0].nbDims == 3
            && outExprs[0].d[0]->getConstantValue() == 2 && outExprs[0].d[1]->getConstantValue() == 64
            && outExprs[0].d[2]->getConstantValue() == 12 * 64,
        "flash: output shape is [B, S, H*D]");
    inExprs[0] = exprs.dims({2, 64, 768});
    logger.clear();
    expect(build.getOutputShapes(inExprs, 7, nullptr, 0, outExprs, 1, exprs) != 0
            && logger.saw(ILogger::Severity::kERROR, "rank"),
        "flash: rank-3 q refused by getOutputShapes");

    io = flashIo(DataType::kHALF);
    expect(build.configurePlugin(io.data(), 7, &io[7], 1) == 0, "flash: configurePlugin with consistent shapes");
    for (int32_t k : {0, 1, 2, 5, 7})
    {
        io[k].desc.dims.d[0] = -1; // dynamic batch and sequence
        io[k].desc.dims.d[k == 5 || k == 7 ? 1 : 2] = -1;
    }
    expect(build.configurePlugin(io.data(), 7, &io[7], 1) == 0, "flash: dynamic batch and sequence accepted");
    expect(build.getWorkspaceSize(io.data(), 7, &io[7], 1) == 0, "flash: no workspace");
    // One dimension of one input (or of the output, 7) changed from flashIo's: refused, the message naming it.
    struct BadDim
    {
        int32_t tensor;
        int32_t dim;
        int64_t value;
        char const* message;
        char const* check;
    };
    BadDim const badDims[] = {
        {1, 2, 65, "k ", "flash: k of another shape refused"},
        {3, 1, 511, "even number of rows", "flash: odd 2P refused"},
        {4, 1, 256, "same number of rows", "flash: pos_key and pos_query rows differ: refused"},
        {3, 0, 6, "pos_key", "flash: pos_key with other heads refused"},
        {5, 1, 63, "mask", "flash: mask of another shape refused"},
        {6, 0, 101, "rel_table", "flash: table shorter than 2*S - 1 refused at build time"},
        {7, 2, 12 * 32, "output", "flash: output of another shape refused"},
    };
    for (BadDim const& bad : badDims)
    {
        io = flashIo(DataType::kHALF);
        Dims dims = io[bad.tensor].desc.dims;
        dims.d[bad.dim] = bad.value;
        io[bad.tensor] = dynDesc(dims, io[bad.tensor].desc.type); // its profile range too
        expect(refused(build, logger, io, bad.message), bad.check);
    }
    expect(refused(build, logger, flashIo(DataType::kHALF, 24), "multiple of 16"), "flash: head dim 24 refused");
    expect(refused(build, logger, flashIo(DataType::kHALF, 256), "multiple of 16"), "flash: head dim 256 refused");
    expect(refused(build, logger, flashIo(DataType::kFLOAT), "FP16 or BF16"), "flash: FP32 refused at build time");

    // ---- runtime (no device: nothing may launch) ----
    std::vector<PluginTensorDesc> rt;
    for (DynamicPluginTensorDesc const& d : flashIo(DataType::kHALF))
    {
        rt.push_back(d.desc);
    }
    rt[6].dims = makeDims({63});
    logger.clear();
    expect(runtime.onShapeChange(rt.data(), 7, &rt[7], 1) != 0 && logger.saw(ILogger::Severity::kERROR, "rel_table"),
        "flash: onShapeChange: table too short refused");
    std::vector<PluginTensorDesc> empty = rt;
    empty[6].dims = makeDims({1023});
    for (int32_t k : {0, 1, 2, 5, 7})
    {
        empty[k].dims.d[0] = 0;
    }
    expect(runtime.onShapeChange(empty.data(), 7, &empty[7], 1) == 0, "flash: onShapeChange of an empty batch");
    void const* nulls[7] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    void* outputs[1] = {nullptr};
    expect(runtime.enqueue(empty.data(), &empty[7], nulls, outputs, nullptr, nullptr) == 0,
        "flash: enqueue of an empty batch");
    // Fake device addresses: argument checks refuse the launch before any is used.
    void const* aligned[7];
    for (uintptr_t k = 0; k < 7; ++k)
    {
        aligned[k] = reinterpret_cast<void const*>(0x10000 + 0x1000 * k);
    }
    void* alignedOut[1] = {reinterpret_cast<void*>(0x20000)};
    std::vector<PluginTensorDesc> odd = empty;
    for (int32_t k : {0, 1, 2, 5, 7})
    {
        odd[k].dims.d[0] = 2;
    }
    for (int32_t k : {0, 1, 2, 3, 4})
    {
        odd[k].dims.d[odd[k].dims.nbDims - 1] = 24;
    }
    logger.clear();
    expect(runtime.enqueue(odd.data(), &odd[7], aligned, alignedOut, nullptr, nullptr) != 0
            && logger.saw(ILogger::Severity::kERROR, "multiple of 16"),
        "flash: enqueue with head dim 24 is a logged failure");
    std::vector<PluginTensorDesc> full = empty;
    for (int32_t k : {0, 1, 2, 5, 7})
    {
        full[k].dims.d[0] = 2;
    }
    aligned[1] = reinterpret_cast<void const*>(0x11001);
    logger.clear();
    expect(runtime.enqueue(full.data(), &full[7], aligned, alignedOut, nullptr, nullptr) != 0
            && logger.saw(ILogger::Severity::kERROR, "aligned"),
        "flash: enqueue with a misaligned k is a logged failure");
    std::vector<PluginTensorDesc> rank3 = full;
    rank3[0].dims = makeDims({2, 64, 768});
    logger.clear();
    expect(runtime.enqueue(rank3.data(), &rank3[7], aligned, alignedOut, nullptr, nullptr) != 0
            && logger.saw(ILogger::Severity::kERROR, "rank 4"),
        "flash: enqueue with a rank-3 q is a logged failure");
    plugin.reset();

    // p2c only: q, k, v, pos_query, mask, rel_table (the later has_c2p wins).
    std::vector<DataType> six = types(DataType::kBF16);
    six.erase(six.begin() + 3);
    expectTakes(creator, std::string{kValid} + ",has_c2p=0", six, "flash: p2c-only");
}

} // namespace

OpChecks const kFlashChecks{"DisentangledFlashAttention", kValid, checkFlash};

} // namespace selftest
