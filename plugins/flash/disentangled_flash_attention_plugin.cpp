/*
 * DisentangledFlashAttention TensorRT plugin: the op's shapes, types and launch (identity, fields,
 * serialization and logging: plugin_base.h; kernel selection and arguments: flash_launcher.h).
 *
 * FP16 and BF16 I/O only: the kernel's FP32 form (exact fp32 dot products) spills registers and needs
 * more than 48 KiB of shared memory at head dim 128, so it is not compiled for TensorRT; an FP32
 * graph is refused with a logged message at build time.
 */
#include "disentangled_flash_attention_plugin.h"

#include "flash_launcher.h"

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
    {"q_scale", PluginFieldType::kFLOAT32, -kNO_BOUND, kNO_BOUND},
    {"k_scale", PluginFieldType::kFLOAT32, -kNO_BOUND, kNO_BOUND},
    {"pos_scale", PluginFieldType::kFLOAT32, -kNO_BOUND, kNO_BOUND},
    {"has_c2p", PluginFieldType::kINT32, 0, 1},
    {"has_p2c", PluginFieldType::kINT32, 0, 1},
    {"position_buckets", PluginFieldType::kINT32, 0, kNO_BOUND},
    {"max_relative_positions", PluginFieldType::kINT32, 1, kNO_BOUND},
};
enum FieldIndex : size_t
{
    kQ_SCALE,
    kK_SCALE,
    kPOS_SCALE,
    kHAS_C2P,
    kHAS_P2C
};
constexpr OpDesc kOP{"DisentangledFlashAttention", kFIELDS, sizeof(kFIELDS) / sizeof(kFIELDS[0])};

bool isPluginIo(DataType type) noexcept
{
    return type == DataType::kHALF || type == DataType::kBF16;
}

std::string refusedType(DataType type)
{
    return std::string{"q is "} + typeName(type) + ": the TensorRT plugin takes FP16 or BF16 (cast the attention "
        + "inputs, or build from the unfused graph); INT8 stays outside the plugin (Q/DQ around it)";
}

//! The table covers relative positions (-Smax, Smax) with Smax = (length + 1) / 2 >= S.
std::string checkTableLength(int64_t tableLen, int64_t seq)
{
    if (tableLen >= 0 && seq >= 1 && (tableLen < 2 * seq - 1 || tableLen % 2 == 0))
    {
        return "rel_table has " + std::to_string(tableLen) + " entries but sequences of length " + std::to_string(seq)
            + " need an odd length >= " + std::to_string(2 * seq - 1)
            + " (build it with max_len >= the longest sequence of the optimization profile)";
    }
    return {};
}

} // namespace

OpDesc const& DisentangledFlashAttentionPlugin::op() noexcept
{
    return kOP;
}

DisentangledFlashAttentionPlugin::DisentangledFlashAttentionPlugin(FieldValues const& fields)
    : PluginBase(kOP, fields)
{
}

nvinfer1::IPluginV3* DisentangledFlashAttentionPlugin::clone() noexcept
{
    try
    {
        return new DisentangledFlashAttentionPlugin(*this);
    }
    catch (...)
    {
        report("clone");
    }
    return nullptr;
}

DisentangledFlashAttentionPlugin::Layout DisentangledFlashAttentionPlugin::layout() const noexcept
{
    Layout l;
    int32_t next = 3;
    if (mFields.intAt(kHAS_C2P) != 0)
    {
        l.posKey = next++;
    }
    if (mFields.intAt(kHAS_P2C) != 0)
    {
        l.posQuery = next++;
    }
    l.mask = next++;
    l.table = next++;
    l.nbInputs = next;
    return l;
}

std::string DisentangledFlashAttentionPlugin::checkDims(Dims const* in, Dims const* out) const
{
    Layout const l = layout();
    Dims const& q = in[0];
    if (q.nbDims != 4)
    {
        return "q must be [batch, heads, seq, head_dim], got " + dimsToString(q);
    }
    for (int32_t which : {1, 2})
    {
        bool ok = in[which].nbDims == 4;
        for (int32_t k = 0; ok && k < 4; ++k)
        {
            ok = sameOrUnknown(in[which].d[k], q.d[k]);
        }
        if (!ok)
        {
            return std::string{which == 1 ? "k " : "v "} + dimsToString(in[which]) + " must have q's shape "
                + dimsToString(q);
        }
    }
    int64_t rows = -1;
    for (int32_t which : {l.posKey, l.posQuery})
    {
        if (which < 0)
        {
            continue;
        }
        Dims const& pos = in[which];
        std::string const name = which == l.posKey ? "pos_key" : "pos_query";
        if (pos.nbDims != 3 || !sameOrUnknown(pos.d[0], q.d[1]) || !sameOrUnknown(pos.d[2], q.d[3]))
        {
            return name + " " + dimsToString(pos) + " must be [heads, 2P, head_dim] for q " + dimsToString(q);
        }
        if (pos.d[1] >= 0 && (pos.d[1] < 2 || pos.d[1] % 2 != 0))
        {
            return name + " needs an even number of rows 2P >= 2, got " + dimsToString(pos);
        }
        if (!sameOrUnknown(rows, pos.d[1]))
        {
            return "pos_key and pos_query must have the same number of rows (2P)";
        }
        rows = pos.d[1] >= 0 ? pos.d[1] : rows;
    }
    Dims const& mask = in[l.mask];
    if (mask.nbDims != 2 || !sameOrUnknown(mask.d[0], q.d[0]) || !sameOrUnknown(mask.d[1], q.d[2]))
    {
        return "mask " + dimsToString(mask) + " must be [batch, seq] for q " + dimsToString(q);
    }
    if (in[l.table].nbDims != 1)
    {
        return "rel_table must be 1-D [2*Smax - 1], got " + dimsToString(in[l.table]);
    }
    if (out != nullptr)
    {
        int64_t const width = q.d[1] >= 0 && q.d[3] >= 0 ? q.d[1] * q.d[3] : -1;
        if (out->nbDims != 3 || !sameOrUnknown(out->d[0], q.d[0]) || !sameOrUnknown(out->d[1], q.d[2])
            || !sameOrUnknown(out->d[2], width))
        {
            return "output " + dimsToString(*out) + " must be [batch, seq, heads * head_dim] for q " + dimsToString(q);
        }
    }
    return {};
}

int32_t DisentangledFlashAttentionPlugin::getOutputDataTypes(
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
        if (!isPluginIo(inputTypes[0]))
        {
            error(refusedType(inputTypes[0]));
            return 1;
        }
        for (int32_t which : {1, 2, l.posKey, l.posQuery})
        {
            if (which >= 0 && inputTypes[which] != inputTypes[0])
            {
                error(std::string{"input "} + std::to_string(which) + " is " + typeName(inputTypes[which])
                    + " but q is " + typeName(inputTypes[0]) + ": q, k, v and the positional inputs share one type");
                return 1;
            }
        }
        if (inputTypes[l.mask] != DataType::kINT32 || inputTypes[l.table] != DataType::kINT32)
        {
            error(std::string{"mask and rel_table must be INT32, got "} + typeName(inputTypes[l.mask]) + " and "
                + typeName(inputTypes[l.table]));
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

int32_t DisentangledFlashAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    try
    {
        Layout const l = layout();
        if (inputs == nullptr || outputs == nullptr || nbShapeInputs != 0
            || !counts("getOutputShapes", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        nvinfer1::DimsExprs const& q = inputs[0];
        if (q.nbDims != 4)
        {
            error("q must be [batch, heads, seq, head_dim], got rank " + std::to_string(q.nbDims));
            return 1;
        }
        // context [B, S, H * D]
        outputs[0].nbDims = 3;
        outputs[0].d[0] = q.d[0];
        outputs[0].d[1] = q.d[2];
        outputs[0].d[2] = exprBuilder.operation(nvinfer1::DimensionOperation::kPROD, *q.d[1], *q.d[3]);
        return outputs[0].d[2] != nullptr ? 0 : 1;
    }
    catch (...)
    {
        report("getOutputShapes");
    }
    return 1;
}

bool DisentangledFlashAttentionPlugin::supportsFormatCombination(
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
        if (pos == l.mask || pos == l.table)
        {
            return desc.type == DataType::kINT32;
        }
        if (pos == 0)
        {
            if (!isPluginIo(desc.type) && (desc.type == DataType::kFLOAT || desc.type == DataType::kINT8)
                && !mTypeReported)
            {
                mTypeReported = true;
                logMessage(ILogger::Severity::kWARNING, kOP.name, refusedType(desc.type));
            }
            return isPluginIo(desc.type);
        }
        return desc.type == inOut[0].desc.type; // k, v, pos_key, pos_query and the output: q's type
    }
    catch (...)
    {
        report("supportsFormatCombination");
    }
    return false;
}

int32_t DisentangledFlashAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layout();
        if (in == nullptr || out == nullptr || !counts("configurePlugin", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        Dims dims[7];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].desc.dims;
        }
        std::string why = checkDims(dims, &out[0].desc.dims);
        if (why.empty() && in[0].max.nbDims == 4)
        {
            why = checkTableLength(in[l.table].min.d[0], in[0].max.d[2]);
        }
        int64_t const headDim = dims[0].d[3];
        if (why.empty() && !isPluginIo(in[0].desc.type))
        {
            why = refusedType(in[0].desc.type);
        }
        if (why.empty() && headDim >= 0)
        {
            why = flash::checkServable(
                kernelType(in[0].desc.type), headDim, l.posKey >= 0, l.posQuery >= 0); // the build GPU's kernel
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
        report("configurePlugin");
    }
    return 1;
}

int32_t DisentangledFlashAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layout();
        if (in == nullptr || out == nullptr || !counts("onShapeChange", nbInputs, l.nbInputs, nbOutputs))
        {
            return 1;
        }
        Dims dims[7];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].dims;
        }
        std::string why = checkDims(dims, &out[0].dims);
        if (why.empty())
        {
            why = checkTableLength(in[l.table].dims.d[0], in[0].dims.d[2]);
        }
        if (why.empty() && in[0].dims.d[0] > 0 && in[0].dims.d[2] > 0)
        {
            // Load the kernel now rather than in the first enqueue, which may be under CUDA graph capture.
            if (flash::prepare(kernelType(in[0].type), in[0].dims.d[3], l.posKey >= 0, l.posQuery >= 0, why)
                == cudaSuccess)
            {
                why.clear();
            }
        }
        if (!why.empty())
        {
            error("onShapeChange: " + why);
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

int32_t DisentangledFlashAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc,
    PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* /*workspace*/,
    cudaStream_t stream) noexcept
{
    try
    {
        Layout const l = layout();
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            error("enqueue: null descriptor or buffer array");
            return 1;
        }
        Dims const& q = inputDesc[0].dims;
        if (q.nbDims != 4)
        {
            error("enqueue: q must have rank 4, got " + dimsToString(q));
            return 1;
        }
        int32_t const posInput = l.posKey >= 0 ? l.posKey : l.posQuery;
        flash::FlashAttentionArgs args;
        args.q = inputs[0];
        args.k = inputs[1];
        args.v = inputs[2];
        args.posKey = l.posKey >= 0 ? inputs[l.posKey] : nullptr;
        args.posQuery = l.posQuery >= 0 ? inputs[l.posQuery] : nullptr;
        args.mask = static_cast<int32_t const*>(inputs[l.mask]);
        args.relTable = static_cast<int32_t const*>(inputs[l.table]);
        args.relTableLen = inputDesc[l.table].dims.d[0];
        args.out = outputs[0];
        args.batch = q.d[0];
        args.heads = q.d[1];
        args.seq = q.d[2];
        args.headDim = q.d[3];
        args.positionRows = inputDesc[posInput].dims.nbDims == 3 ? inputDesc[posInput].dims.d[1] : 0;
        args.qScale = mFields.floatAt(kQ_SCALE);
        args.kScale = mFields.floatAt(kK_SCALE);
        args.posScale = mFields.floatAt(kPOS_SCALE);
        std::string why;
        if (flash::flashAttention(kernelType(inputDesc[0].type), args, stream, why) != cudaSuccess)
        {
            error("enqueue: " + why + " (q " + dimsToString(q) + ", " + typeName(inputDesc[0].type) + ")");
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
