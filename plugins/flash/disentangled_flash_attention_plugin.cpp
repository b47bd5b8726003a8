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
#include "plugin_base.h"

#include <string>

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
//! Inputs: q, k, v, then pos_key (the c2p input) and pos_query (p2c) as has_c2p and has_p2c say, then
//! the trailing mask and rel_table.
enum TrailingInput : int32_t
{
    kMASK,
    kTABLE
};
constexpr OpDesc kOP{"DisentangledFlashAttention", kFIELDS, sizeof(kFIELDS) / sizeof(kFIELDS[0]), 3, kTABLE + 1};

bool isPluginIo(DataType type) noexcept
{
    return type == DataType::kHALF || type == DataType::kBF16;
}

std::string refusedType(DataType type)
{
    return std::string{"q is "} + typeName(type) + ": the TensorRT plugin takes FP16 or BF16 (cast the attention "
        + "inputs, or build from the unfused graph); INT8 stays outside the plugin (Q/DQ around it)";
}

class DisentangledFlashAttentionPlugin final : public Plugin<DisentangledFlashAttentionPlugin, kOP>
{
public:
    using Plugin::Plugin;

private:
    std::string outputType(DataType const* inputTypes, DataType& output) const override
    {
        InputLayout const l = inputLayout();
        if (!isPluginIo(inputTypes[0]))
        {
            return refusedType(inputTypes[0]);
        }
        for (int32_t which : {1, 2, l.c2p, l.p2c})
        {
            if (which >= 0 && inputTypes[which] != inputTypes[0])
            {
                return std::string{"input "} + std::to_string(which) + " is " + typeName(inputTypes[which])
                    + " but q is " + typeName(inputTypes[0]) + ": q, k, v and the positional inputs share one type";
            }
        }
        DataType const mask = inputTypes[l.trailing + kMASK];
        DataType const table = inputTypes[l.trailing + kTABLE];
        if (mask != DataType::kINT32 || table != DataType::kINT32)
        {
            return std::string{"mask and rel_table must be INT32, got "} + typeName(mask) + " and " + typeName(table);
        }
        output = inputTypes[0];
        return {};
    }

    std::string outputShape(
        DimsExprs const* inputs, DimsExprs& output, IExprBuilder& exprBuilder) const override
    {
        DimsExprs const& q = inputs[0];
        if (q.nbDims != 4)
        {
            return "q must be [batch, heads, seq, head_dim], got rank " + std::to_string(q.nbDims);
        }
        // context [B, S, H * D]
        output.nbDims = 3;
        output.d[0] = q.d[0];
        output.d[1] = q.d[2];
        output.d[2] = exprBuilder.operation(nvinfer1::DimensionOperation::kPROD, *q.d[1], *q.d[3]);
        return {};
    }

    bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) override
    {
        InputLayout const l = inputLayout();
        DataType const type = inOut[pos].desc.type;
        if (pos == l.trailing + kMASK || pos == l.trailing + kTABLE)
        {
            return type == DataType::kINT32;
        }
        if (pos == 0)
        {
            if (type == DataType::kFLOAT || type == DataType::kINT8)
            {
                warnOnce(refusedType(type));
            }
            return isPluginIo(type);
        }
        return type == inOut[0].desc.type; // k, v, pos_key, pos_query and the output: q's type
    }

    std::string checkDims(Dims const* in, Dims const* out) const override
    {
        InputLayout const l = inputLayout();
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
        for (int32_t which : {l.c2p, l.p2c})
        {
            if (which < 0)
            {
                continue;
            }
            Dims const& pos = in[which];
            std::string const name = which == l.c2p ? "pos_key" : "pos_query";
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
        Dims const& mask = in[l.trailing + kMASK];
        if (mask.nbDims != 2 || !sameOrUnknown(mask.d[0], q.d[0]) || !sameOrUnknown(mask.d[1], q.d[2]))
        {
            return "mask " + dimsToString(mask) + " must be [batch, seq] for q " + dimsToString(q);
        }
        if (in[l.trailing + kTABLE].nbDims != 1)
        {
            return "rel_table must be 1-D [2*Smax - 1], got " + dimsToString(in[l.trailing + kTABLE]);
        }
        int64_t const width = q.d[1] >= 0 && q.d[3] >= 0 ? q.d[1] * q.d[3] : -1;
        if (out->nbDims != 3 || !sameOrUnknown(out->d[0], q.d[0]) || !sameOrUnknown(out->d[1], q.d[2])
            || !sameOrUnknown(out->d[2], width))
        {
            return "output " + dimsToString(*out) + " must be [batch, seq, heads * head_dim] for q " + dimsToString(q);
        }
        return {};
    }

    std::string checkBuild(DynamicPluginTensorDesc const* in, Dims const* dims) const override
    {
        InputLayout const l = inputLayout();
        std::string why
            = in[0].max.nbDims == 4 ? checkTableLength(in[l.trailing + kTABLE].min.d[0], in[0].max.d[2], true) : "";
        int64_t const headDim = dims[0].d[3];
        if (why.empty() && !isPluginIo(in[0].desc.type))
        {
            why = refusedType(in[0].desc.type);
        }
        if (why.empty() && headDim >= 0)
        {
            why = flash::checkServable(
                kernelType(in[0].desc.type), headDim, l.c2p >= 0, l.p2c >= 0); // the build GPU's kernel
        }
        return why;
    }

    std::string checkRuntime(PluginTensorDesc const* in) const override
    {
        InputLayout const l = inputLayout();
        std::string why = checkTableLength(in[l.trailing + kTABLE].dims.d[0], in[0].dims.d[2], true);
        if (why.empty() && in[0].dims.d[0] > 0 && in[0].dims.d[2] > 0)
        {
            // Load the kernel now rather than in the first enqueue, which may be under CUDA graph capture.
            if (flash::prepare(kernelType(in[0].type), in[0].dims.d[3], l.c2p >= 0, l.p2c >= 0, why)
                == cudaSuccess)
            {
                why.clear();
            }
        }
        return why;
    }

    std::string launch(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
        cudaStream_t stream) const override
    {
        InputLayout const l = inputLayout();
        Dims const& q = inputDesc[0].dims;
        if (q.nbDims != 4)
        {
            return "enqueue: q must have rank 4, got " + dimsToString(q);
        }
        int32_t const posInput = l.c2p >= 0 ? l.c2p : l.p2c;
        flash::FlashAttentionArgs args;
        args.q = inputs[0];
        args.k = inputs[1];
        args.v = inputs[2];
        args.posKey = l.c2p >= 0 ? inputs[l.c2p] : nullptr;
        args.posQuery = l.p2c >= 0 ? inputs[l.p2c] : nullptr;
        args.mask = static_cast<int32_t const*>(inputs[l.trailing + kMASK]);
        args.relTable = static_cast<int32_t const*>(inputs[l.trailing + kTABLE]);
        args.relTableLen = inputDesc[l.trailing + kTABLE].dims.d[0];
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
            return "enqueue: " + why + " (q " + dimsToString(q) + ", " + typeName(inputDesc[0].type) + ")";
        }
        return {};
    }
};

} // namespace

nvinfer1::IPluginCreatorV3One& disentangledFlashAttentionCreator() noexcept
{
    static Creator<DisentangledFlashAttentionPlugin> creator;
    return creator;
}

} // namespace plugin
} // namespace debertrt
