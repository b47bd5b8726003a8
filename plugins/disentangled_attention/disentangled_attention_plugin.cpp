/*
 * DisentangledAttention TensorRT plugin: the op's shapes, types and launch (see plugin_base.h for
 * identity, fields, serialization and logging, shared with the other debertrt plugins).
 */
#include "disentangled_attention_plugin.h"

#include "disentangled_attention_kernel.cuh"
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
//! Inputs: c2c, then c2p and p2c as has_c2p and has_p2c say, then the trailing rel_table.
enum TrailingInput : int32_t
{
    kTABLE
};
constexpr OpDesc kOP{"DisentangledAttention", kFIELDS, sizeof(kFIELDS) / sizeof(kFIELDS[0]), 1, kTABLE + 1};

bool isFloatIo(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

std::string const kINT8_REFUSED{
    "INT8 I/O is not supported: the attention scores are float tensors (FP32, FP16 or BF16); keep "
    "quantization (Q/DQ) outside the plugin and feed it a float type"};

//! The table must cover relative positions (-S, S) for S = max(Sq, Sk), as the reference demands.
std::string checkTableCovers(int64_t tableLen, int64_t sq, int64_t sk)
{
    return checkTableLength(tableLen, sq > sk ? sq : sk, false);
}

class DisentangledAttentionPlugin final : public Plugin<DisentangledAttentionPlugin, kOP>
{
public:
    using Plugin::Plugin;

private:
    std::string outputType(DataType const* inputTypes, DataType& output) const override
    {
        InputLayout const l = inputLayout();
        if (!isFloatIo(inputTypes[0]))
        {
            return inputTypes[0] == DataType::kINT8
                ? kINT8_REFUSED
                : std::string{"c2c is "} + typeName(inputTypes[0]) + "; supported: FP32, FP16, BF16";
        }
        for (int32_t which : {l.c2p, l.p2c})
        {
            if (which >= 0 && inputTypes[which] != inputTypes[0])
            {
                return std::string{"positional scores are "} + typeName(inputTypes[which]) + " but c2c is "
                    + typeName(inputTypes[0]) + "; all float inputs must have one type";
            }
        }
        if (inputTypes[l.trailing + kTABLE] != DataType::kINT32)
        {
            return std::string{"rel_table must be INT32, got "} + typeName(inputTypes[l.trailing + kTABLE]);
        }
        output = inputTypes[0];
        return {};
    }

    std::string outputShape(
        DimsExprs const* inputs, DimsExprs& output, IExprBuilder& /*exprBuilder*/) const override
    {
        if (inputs[0].nbDims < 2)
        {
            return "c2c must have rank >= 2 ([..., Sq, Sk]), got rank " + std::to_string(inputs[0].nbDims);
        }
        output = inputs[0]; // out has c2c's (dynamic) shape
        return {};
    }

    bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) override
    {
        DataType const type = inOut[pos].desc.type;
        if (pos == inputLayout().trailing + kTABLE)
        {
            return type == DataType::kINT32;
        }
        if (pos == 0)
        {
            if (type == DataType::kINT8)
            {
                warnOnce(kINT8_REFUSED);
            }
            return isFloatIo(type);
        }
        return type == inOut[0].desc.type; // positional inputs and the output: c2c's type
    }

    std::string checkDims(Dims const* in, Dims const* out) const override
    {
        InputLayout const l = inputLayout();
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
                return std::string{name} + " " + dimsToString(pos) + " does not match c2c " + dimsToString(c2c)
                    + " (want " + (which == l.c2p ? "[..., Sq, 2*span]" : "[..., Sk, 2*span]") + ")";
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
        if (in[l.trailing + kTABLE].nbDims != 1)
        {
            return "rel_table must be 1-D [2*Smax - 1], got " + dimsToString(in[l.trailing + kTABLE]);
        }
        bool ok = out->nbDims == rank;
        for (int32_t k = 0; ok && k < rank; ++k)
        {
            ok = sameOrUnknown(out->d[k], c2c.d[k]);
        }
        if (!ok)
        {
            return "output " + dimsToString(*out) + " must have c2c's shape " + dimsToString(c2c);
        }
        return {};
    }

    std::string checkBuild(DynamicPluginTensorDesc const* in, Dims const* /*dims*/) const override
    {
        Dims const& maxC2c = in[0].max;
        int32_t const rank = maxC2c.nbDims;
        int64_t const tableLen = in[inputLayout().trailing + kTABLE].min.d[0];
        std::string const why
            = rank >= 2 ? checkTableCovers(tableLen, maxC2c.d[rank - 2], maxC2c.d[rank - 1]) : std::string{};
        return why.empty() && in[0].desc.type == DataType::kINT8 ? kINT8_REFUSED : why;
    }

    std::string checkRuntime(PluginTensorDesc const* in) const override
    {
        Dims const& c2c = in[0].dims;
        int64_t const tableLen = in[inputLayout().trailing + kTABLE].dims.d[0];
        return checkTableCovers(tableLen, c2c.d[c2c.nbDims - 2], c2c.d[c2c.nbDims - 1]);
    }

    std::string launch(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
        cudaStream_t stream) const override
    {
        InputLayout const l = inputLayout();
        Dims const& c2c = inputDesc[0].dims;
        int32_t const rank = c2c.nbDims;
        if (rank < 2)
        {
            return "enqueue: c2c must have rank >= 2";
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
            return {}; // empty tensor: nothing to do
        }
        int32_t const posInput = l.c2p >= 0 ? l.c2p : l.p2c;
        int64_t const width = inputDesc[posInput].dims.d[inputDesc[posInput].dims.nbDims - 1];
        int64_t const tableLen = inputDesc[l.trailing + kTABLE].dims.d[0];
        if (sq > INT32_MAX || sk > INT32_MAX || width / 2 > INT32_MAX || tableLen > INT32_MAX)
        {
            return "enqueue: a dimension exceeds INT32_MAX";
        }
        int32_t const dtype = kernelType(inputDesc[0].type);
        if (dtype < 0)
        {
            return inputDesc[0].type == DataType::kINT8
                ? kINT8_REFUSED
                : std::string{"enqueue: unsupported type "} + typeName(inputDesc[0].type);
        }

        DisentangledAttentionArgs args;
        args.c2c = inputs[0];
        args.c2p = l.c2p >= 0 ? inputs[l.c2p] : nullptr;
        args.p2c = l.p2c >= 0 ? inputs[l.p2c] : nullptr;
        args.relTable = static_cast<int32_t const*>(inputs[l.trailing + kTABLE]);
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
            return std::string{"enqueue: kernel launch failed: "} + cudaGetErrorName(status) + " ("
                + cudaGetErrorString(status) + ") for c2c " + dimsToString(c2c) + ", 2*span " + std::to_string(width)
                + ", rel_table length " + std::to_string(tableLen);
        }
        return {};
    }
};

} // namespace

nvinfer1::IPluginCreatorV3One& disentangledAttentionCreator() noexcept
{
    static Creator<DisentangledAttentionPlugin> creator;
    return creator;
}

} // namespace plugin
} // namespace debertrt
