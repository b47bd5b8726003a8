/*
 * DisentangledAttention TensorRT plugin: the op's shapes, types and launch (see plugin_base.h for
 * identity, fields, serialization and logging, shared with the other debertrt plugins).
 */
#include "disentangled_attention_plugin.h"

#include "disentangled_attention_kernel.cuh"

#include <string>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace debertrt
{
namespace plugin
{
namespace
{

// Field order of plugins/spec.py (the self-test prints them; tests compare with the spec).
constexpr FieldDesc kFIELDS[] = {
    {"position_buckets", PluginFieldType::kINT32, 0, kNO_BOUND},
    {"max_relative_positions", PluginFieldType::kINT32, 1, kNO_BOUND},
    {"pos_scale", PluginFieldType::kFLOAT32, -kNO_BOUND, kNO_BOUND},
    {"has_c2p", PluginFieldType::kINT32, 0, 1},
    {"has_p2c", PluginFieldType::kINT32, 0, 1},
};
enum FieldIndex : size_t
{
    kPOSITION_BUCKETS,
    kMAX_RELATIVE_POSITIONS,
    kPOS_SCALE,
    kHAS_C2P,
    kHAS_P2C
};
constexpr OpDesc kOP{"DisentangledAttention", kFIELDS, sizeof(kFIELDS) / sizeof(kFIELDS[0])};

bool isFloatIo(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

std::string const kINT8_REFUSED{
    "INT8 I/O is not supported: the attention scores are float tensors (FP32, FP16 or BF16); keep "
    "quantization (Q/DQ) outside the plugin and feed it a float type"};

//! The table must cover relative positions (-S, S) for S = max(Sq, Sk), as the reference demands.
std::string checkTableLength(int64_t tableLen, int64_t sq, int64_t sk)
{
    int64_t const s = sq > sk ? sq : sk;
    if (tableLen >= 0 && s >= 1 && tableLen < 2 * s - 1)
    {
        return "rel_table has " + std::to_string(tableLen) + " entries but sequences of length "
            + std::to_string(s) + " need " + std::to_string(2 * s - 1)
            + " (build it with max_len >= the longest sequence of the optimization profile)";
    }
    return {};
}

} // namespace

OpDesc const& DisentangledAttentionPlugin::op() noexcept
{
    return kOP;
}

DisentangledAttentionPlugin::DisentangledAttentionPlugin(FieldValues const& fields)
    : PluginBase(kOP, fields)
{
}

nvinfer1::IPluginV3* DisentangledAttentionPlugin::clone() noexcept
{
    try
    {
        return new DisentangledAttentionPlugin(*this);
    }
    catch (...)
    {
        report("clone");
    }
    return nullptr;
}

DisentangledAttentionPlugin::Layout DisentangledAttentionPlugin::layout() const noexcept
{
    Layout l;
    int32_t next = 1;
    if (mFields.intAt(kHAS_C2P) != 0)
    {
        l.c2p = next++;
    }
    if (mFields.intAt(kHAS_P2C) != 0)
    {
        l.p2c = next++;
    }
    l.table = next++;
    l.nbInputs = next;
    return l;
}

std::string DisentangledAttentionPlugin::checkDims(Dims const* in, Dims const* out) const
{
    Layout const l = layout();
    Dims const& c2c = in[0];
    if (c2c.nbDims < 2)
    {
        return "c2c must have rank >= 2 ([..., Sq, Sk]), got " + dimsToString(c2c);
    }
    int32_t const rank = c2c.nbDims;
    int64_t width = -1;
    for (int32_t which : {l.c2p, l.p2c})
    {
        if (which < 0)
        {
            continue;
        }
        char const* name = which == l.c2p ? "c2p" : "p2c";
        Dims const& pos = in[which];
        bool ok = pos.nbDims == rank;
        for (int32_t k = 0; ok && k < rank - 2; ++k)
        {
            ok = sameOrUnknown(pos.d[k], c2c.d[k]);
        }
        // c2p rows are queries (Sq), p2c rows are keys (Sk).
        int64_t const rows = which == l.c2p ? c2c.d[rank - 2] : c2c.d[rank - 1];
        if (!ok || !sameOrUnknown(pos.d[rank - 2], rows))
        {
            return std::string{name} + " " + dimsToString(pos) + " does not match c2c " + dimsToString(c2c) + " (want "
                + (which == l.c2p ? "[..., Sq, 2*span]" : "[..., Sk, 2*span]") + ")";
        }
        int64_t const w = pos.d[rank - 1];
        if (w >= 0 && (w < 2 || w % 2 != 0))
        {
            return std::string{name} + " needs an even last dimension >= 2 (2*span), got " + dimsToString(pos);
        }
        if (!sameOrUnknown(width, w))
        {
            return "c2p and p2c must have the same last dimension (2*span)";
        }
        width = w >= 0 ? w : width;
    }
    if (in[l.table].nbDims != 1)
    {
        return "rel_table must be 1-D [2*Smax - 1], got " + dimsToString(in[l.table]);
    }
    if (out != nullptr)
    {
        bool ok = out->nbDims == rank;
        for (int32_t k = 0; ok && k < rank; ++k)
        {
            ok = sameOrUnknown(out->d[k], c2c.d[k]);
        }
        if (!ok)
        {
            return "output " + dimsToString(*out) + " must have c2c's shape " + dimsToString(c2c);
        }
    }
    return {};
}

int32_t DisentangledAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        Layout const l = layout();
        if (outputTypes == nullptr || inputTypes == nullptr
            || !counts("getOutputDataTypes", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        if (!isFloatIo(inputTypes[0]))
        {
            error(inputTypes[0] == DataType::kINT8
                    ? kINT8_REFUSED
                    : std::string{"c2c is "} + typeName(inputTypes[0]) + "; supported: FP32, FP16, BF16");
            return 1;
        }
        for (int32_t which : {l.c2p, l.p2c})
        {
            if (which >= 0 && inputTypes[which] != inputTypes[0])
            {
                error(std::string{"positional scores are "} + typeName(inputTypes[which]) + " but c2c is "
                    + typeName(inputTypes[0]) + "; all float inputs must have one type");
                return 1;
            }
        }
        if (inputTypes[l.table] != DataType::kINT32)
        {
            error(std::string{"rel_table must be INT32, got "} + typeName(inputTypes[l.table]));
            return 1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (...)
    {
        report("getOutputDataTypes");
    }
    return 1;
}

int32_t DisentangledAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        Layout const l = layout();
        if (inputs == nullptr || outputs == nullptr || nbShapeInputs != 0
            || !counts("getOutputShapes", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        if (inputs[0].nbDims < 2)
        {
            error("c2c must have rank >= 2 ([..., Sq, Sk]), got rank " + std::to_string(inputs[0].nbDims));
            return 1;
        }
        outputs[0] = inputs[0]; // out has c2c's (dynamic) shape
        return 0;
    }
    catch (...)
    {
        report("getOutputShapes");
    }
    return 1;
}

bool DisentangledAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layout();
        if (inOut == nullptr || nbInputs != l.nbInputs || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == l.table)
        {
            return desc.type == DataType::kINT32;
        }
        if (pos == 0)
        {
            if (desc.type == DataType::kINT8 && !mInt8Reported)
            {
                mInt8Reported = true;
                logMessage(ILogger::Severity::kWARNING, kOP.name, kINT8_REFUSED);
            }
            return isFloatIo(desc.type);
        }
        // Positional inputs and the output: c2c's type.
        return desc.type == inOut[0].desc.type;
    }
    catch (...)
    {
        report("supportsFormatCombination");
    }
    return false;
}

int32_t DisentangledAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layout();
        if (in == nullptr || out == nullptr
            || !counts("configurePlugin", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        Dims dims[4];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].desc.dims;
        }
        std::string why = checkDims(dims, &out[0].desc.dims);
        if (why.empty())
        {
            Dims const& maxC2c = in[0].max;
            int32_t const rank = maxC2c.nbDims;
            why = rank >= 2 ? checkTableLength(in[l.table].min.d[0], maxC2c.d[rank - 2], maxC2c.d[rank - 1])
                            : std::string{};
        }
        if (!why.empty())
        {
            error(why);
            return 1;
        }
        if (in[0].desc.type == DataType::kINT8)
        {
            error(kINT8_REFUSED);
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        report("configurePlugin");
    }
    return 1;
}

int32_t DisentangledAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layout();
        if (in == nullptr || out == nullptr
            || !counts("onShapeChange", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        Dims dims[4];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].dims;
        }
        std::string why = checkDims(dims, &out[0].dims);
        if (why.empty())
        {
            int32_t const rank = in[0].dims.nbDims;
            why = checkTableLength(in[l.table].dims.d[0], in[0].dims.d[rank - 2], in[0].dims.d[rank - 1]);
        }
        if (!why.empty())
        {
            error(why);
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        report("onShapeChange");
    }
    return 1;
}

int32_t DisentangledAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Layout const l = layout();
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            error("enqueue: null descriptor or buffer array");
            return 1;
        }
        Dims const& c2c = inputDesc[0].dims;
        int32_t const rank = c2c.nbDims;
        if (rank < 2)
        {
            error("enqueue: c2c must have rank >= 2");
            return 1;
        }
        int64_t rows = 1;
        for (int32_t k = 0; k < rank - 2; ++k)
        {
            rows *= c2c.d[k];
        }
        int64_t const sq = c2c.d[rank - 2];
        int64_t const sk = c2c.d[rank - 1];
        if (rows == 0 || sq == 0 || sk == 0)
        {
            return 0; // empty tensor: nothing to do
        }
        int32_t const posInput = l.c2p >= 0 ? l.c2p : l.p2c;
        int64_t const width = inputDesc[posInput].dims.d[inputDesc[posInput].dims.nbDims - 1];
        int64_t const tableLen = inputDesc[l.table].dims.d[0];
        if (sq > INT32_MAX || sk > INT32_MAX || width / 2 > INT32_MAX || tableLen > INT32_MAX)
        {
            error("enqueue: a dimension exceeds INT32_MAX");
            return 1;
        }
        int32_t const dtype = kernelType(inputDesc[0].type);
        if (dtype < 0)
        {
            error(inputDesc[0].type == DataType::kINT8 ? kINT8_REFUSED
                                                          : std::string{"enqueue: unsupported type "}
                         + typeName(inputDesc[0].type));
            return 1;
        }

        DisentangledAttentionArgs args;
        args.c2c = inputs[0];
        args.c2p = l.c2p >= 0 ? inputs[l.c2p] : nullptr;
        args.p2c = l.p2c >= 0 ? inputs[l.p2c] : nullptr;
        args.relTable = static_cast<int32_t const*>(inputs[l.table]);
        args.relTableLen = static_cast<int32_t>(tableLen);
        args.out = outputs[0];
        args.rows = rows;
        args.sq = static_cast<int32_t>(sq);
        args.sk = static_cast<int32_t>(sk);
        args.span = static_cast<int32_t>(width / 2);
        args.posScale = mFields.floatAt(kPOS_SCALE);
        cudaError_t const status = disentangledAttention(dtype, args, stream);
        if (status != cudaSuccess)
        {
            error(std::string{"enqueue: kernel launch failed: "} + cudaGetErrorName(status) + " ("
                + cudaGetErrorString(status) + ") for c2c " + dimsToString(c2c) + ", 2*span " + std::to_string(width)
                + ", rel_table length " + std::to_string(tableLen));
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        report("enqueue");
    }
    return 1;
}

} // namespace plugin
} // namespace debertrt
