/*
 * DisentangledAttention TensorRT plugin (IPluginV3, TensorRT 10.x and 11.x).
 *
 * Identity: name "DisentangledAttention", namespace "debertrt", version "1".
 * Fields, inputs, output and formula: plugins/spec.py and README.md beside this file.
 */
#ifndef DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
#define DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H

#include "plugin_base.h"

namespace debertrt
{
namespace plugin
{

class DisentangledAttentionPlugin final : public PluginBase
{
public:
    //! Identity and fields (position_buckets, max_relative_positions, pos_scale, has_c2p, has_p2c).
    static OpDesc const& op() noexcept;

    explicit DisentangledAttentionPlugin(FieldValues const& fields);
    DisentangledAttentionPlugin(DisentangledAttentionPlugin const& other) = default;
    ~DisentangledAttentionPlugin() noexcept override = default;

    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    //! Input positions for this field set: c2c is 0, the table is last.
    struct Layout
    {
        int32_t c2p{-1};
        int32_t p2c{-1};
        int32_t table{-1};
        int32_t nbInputs{0};
    };

    Layout layout() const noexcept;
    //! Structural shape check; -1 (unknown at build time) matches anything. Empty = fine.
    std::string checkDims(nvinfer1::Dims const* in, nvinfer1::Dims const* out) const;

    bool mInt8Reported{false};
};

using DisentangledAttentionPluginCreator = Creator<DisentangledAttentionPlugin>;

} // namespace plugin
} // namespace debertrt

#endif // DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
