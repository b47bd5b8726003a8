/*
 * DisentangledAttention TensorRT plugin (IPluginV3, TensorRT 10.x and 11.x).
 *
 * Identity: name "DisentangledAttention", namespace "debertrt", version "1".
 * Fields, inputs, output and formula: plugins/spec.py and README.md beside this file.
 */
#ifndef DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
#define DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H

#include <NvInferRuntime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace debertrt
{
namespace plugin
{

//! Number of fields (position_buckets, max_relative_positions, pos_scale, has_c2p, has_p2c).
constexpr size_t kDisentangledAttentionNbFields = 5;

//! The plugin's fields (all required; see plugins/spec.py).
struct DisentangledAttentionParameters
{
    int32_t positionBuckets{0};
    int32_t maxRelativePositions{1};
    float posScale{1.0F};
    int32_t hasC2p{1};
    int32_t hasP2c{1};

    //! c2c, the present positional inputs, rel_table.
    int32_t nbInputs() const noexcept
    {
        return 2 + hasC2p + hasP2c;
    }
};

class DisentangledAttentionPlugin final : public nvinfer1::IPluginV3,
                                          public nvinfer1::IPluginV3OneCore,
                                          public nvinfer1::IPluginV3OneBuild,
                                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit DisentangledAttentionPlugin(DisentangledAttentionParameters const& params);
    DisentangledAttentionPlugin(DisentangledAttentionPlugin const& other);
    DisentangledAttentionPlugin& operator=(DisentangledAttentionPlugin const&) = delete;
    DisentangledAttentionPlugin(DisentangledAttentionPlugin&&) = delete;
    DisentangledAttentionPlugin& operator=(DisentangledAttentionPlugin&&) = delete;
    ~DisentangledAttentionPlugin() noexcept override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    DisentangledAttentionParameters const& parameters() const noexcept
    {
        return mParams;
    }

private:
    void describe();

    DisentangledAttentionParameters mParams;
    std::string mTimingCacheId;
    std::string mMetadata;
    std::array<nvinfer1::PluginField, kDisentangledAttentionNbFields> mSerialFields{};
    nvinfer1::PluginFieldCollection mSerialCollection{};
    bool mInt8Reported{false};
};

class DisentangledAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    DisentangledAttentionPluginCreator() noexcept;
    ~DisentangledAttentionPluginCreator() noexcept override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::array<nvinfer1::PluginField, kDisentangledAttentionNbFields> mFields{};
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace debertrt

#endif // DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
