/*
 * Self-test of the DisentangledAttention plugin's build and runtime methods (no GPU: no launch).
 * Inputs c2c [.., Sq, Sk], c2p [.., Sq, 2*span], p2c [.., Sk, 2*span], rel_table [2*Smax - 1].
 */
#include "selftest.h"

#include <cstdio>

using namespace nvinfer1;

namespace selftest
{
namespace
{

constexpr char const* kValid = "position_buckets=256,max_relative_positions=512,pos_scale=0.125,has_c2p=1,has_p2c=1";

void checkGather(IPluginCreatorV3One& creator, RecordingLogger& logger)
{
    Capabilities c;
    std::unique_ptr<IPluginV3> plugin = pluginToCheck(creator, kValid, "DisentangledAttention", c);
    if (plugin == nullptr)
    {
        return;
    }
    IPluginV3OneBuild* build = c.build;
    IPluginV3OneRuntime* runtime = c.runtime;

    // ---- types ----
    DataType outType = DataType::kFLOAT;
    DataType const half[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, half, 4) == 0 && outType == DataType::kHALF, "FP16 in, FP16 out");
    DataType const bf16[4] = {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, bf16, 4) == 0 && outType == DataType::kBF16, "BF16 in, BF16 out");
    DataType const int8[4] = {DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT32};
    logger.clear();
    expect(build->getOutputDataTypes(&outType, 1, int8, 4) != 0 && logger.saw(ILogger::Severity::kERROR, "INT8"),
        "INT8 I/O refused with a logged error");
    DataType const mixed[4] = {DataType::kHALF, DataType::kFLOAT, DataType::kHALF, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, mixed, 4) != 0, "mixed float types refused");
    logger.clear();
    expect(build->getOutputDataTypes(&outType, 1, half, 3) != 0 && logger.saw(ILogger::Severity::kERROR, "expected 4"),
        "wrong input count is a logged error");

    // ---- formats ----
    Dims const c2cDims = makeDims({2, 12, 64, 64});
    Dims const posDims = makeDims({2, 12, 64, 512});
    Dims const tableDims = makeDims({4095});
    auto combination = [&](DataType type) {
        return std::vector<DynamicPluginTensorDesc>{dynDesc(c2cDims, type), dynDesc(posDims, type),
            dynDesc(posDims, type), dynDesc(tableDims, DataType::kINT32), dynDesc(c2cDims, type)};
    };
    logger.clear();
    std::printf("dtypes DisentangledAttention %s\n", acceptedTypes(*build, 4, combination).c_str());
    expect(logger.saw(ILogger::Severity::kWARNING, "INT8"), "INT8 c2c refused with a logged message");
    std::vector<DynamicPluginTensorDesc> io = combination(DataType::kHALF);
    io[1].desc.type = DataType::kFLOAT;
    expect(!build->supportsFormatCombination(1, io.data(), 4, 1), "c2p of another type refused");
    io[1].desc.type = DataType::kHALF;
    io[3].desc.type = DataType::kINT64;
    expect(!build->supportsFormatCombination(3, io.data(), 4, 1), "INT64 table refused");
    io[3].desc.type = DataType::kINT32;
    io[0].desc.format = TensorFormat::kCHW32;
    expect(!build->supportsFormatCombination(0, io.data(), 4, 1), "non-linear format refused");
    io[0].desc.format = TensorFormat::kLINEAR;

    // ---- shapes ----
    ConstantExprBuilder exprs;
    DimsExprs inExprs[4] = {exprs.dims({2, 12, 64, 64}), exprs.dims({2, 12, 64, 512}), exprs.dims({2, 12, 64, 512}),
        exprs.dims({4095})};
    DimsExprs outExprs[1]{};
    expect(build->getOutputShapes(inExprs, 4, nullptr, 0, outExprs, 1, exprs) == 0 && outExprs[0].nbDims == 4
            && outExprs[0].d[3]->getConstantValue() == 64,
        "output shape is c2c's");
    DynamicPluginTensorDesc in[4] = {io[0], io[1], io[2], io[3]};
    expect(build->configurePlugin(in, 4, &io[4], 1) == 0, "configurePlugin with consistent shapes");
    in[2].desc.dims = makeDims({2, 12, 65, 512});
    logger.clear();
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0 && logger.saw(ILogger::Severity::kERROR, "p2c"),
        "p2c rows != Sk refused");
    in[2] = io[2];
    in[1].desc.dims = makeDims({2, 12, 64, 511});
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0, "odd 2*span refused");
    in[1] = io[1];
    in[3] = dynDesc(makeDims({101}), DataType::kINT32);
    logger.clear();
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0 && logger.saw(ILogger::Severity::kERROR, "rel_table"),
        "table shorter than 2*S - 1 refused at build time");
    in[3] = io[3];
    in[0].desc.dims = makeDims({-1, 12, -1, -1});
    in[1].desc.dims = makeDims({-1, 12, -1, 512});
    in[2].desc.dims = makeDims({-1, 12, -1, 512});
    expect(build->configurePlugin(in, 4, &io[4], 1) == 0, "dynamic dims accepted");
    expect(build->getWorkspaceSize(in, 4, &io[4], 1) == 0, "no workspace");

    PluginTensorDesc rt[4] = {desc(c2cDims, DataType::kHALF), desc(posDims, DataType::kHALF),
        desc(posDims, DataType::kHALF), desc(tableDims, DataType::kINT32)};
    PluginTensorDesc rtOut = desc(c2cDims, DataType::kHALF);
    expect(runtime->onShapeChange(rt, 4, &rtOut, 1) == 0, "onShapeChange with consistent shapes");
    rt[3].dims = makeDims({63});
    expect(runtime->onShapeChange(rt, 4, &rtOut, 1) != 0, "onShapeChange: table too short refused");
    rt[3].dims = tableDims;

    // enqueue without a launch: an empty batch is a no-op success, a bad rank a logged failure.
    PluginTensorDesc empty[4] = {desc(makeDims({0, 12, 64, 64}), DataType::kHALF),
        desc(makeDims({0, 12, 64, 512}), DataType::kHALF), desc(makeDims({0, 12, 64, 512}), DataType::kHALF),
        desc(tableDims, DataType::kINT32)};
    PluginTensorDesc emptyOut = empty[0];
    void const* inputs[4] = {nullptr, nullptr, nullptr, nullptr};
    void* outputs[1] = {nullptr};
    expect(runtime->enqueue(empty, &emptyOut, inputs, outputs, nullptr, nullptr) == 0, "enqueue of an empty batch");
    PluginTensorDesc rank1[4] = {desc(makeDims({8}), DataType::kHALF), rt[1], rt[2], rt[3]};
    logger.clear();
    expect(runtime->enqueue(rank1, &emptyOut, inputs, outputs, nullptr, nullptr) != 0
            && logger.saw(ILogger::Severity::kERROR, "rank"),
        "enqueue with a rank-1 c2c is a logged failure");
    plugin.reset();

    // c2p only: 3 inputs (the later has_p2c wins).
    expectTakes(creator, std::string{kValid} + ",has_p2c=0", {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32},
        "c2p-only");
}

} // namespace

OpChecks const kGatherChecks{"DisentangledAttention", kValid, checkGather};

} // namespace selftest
