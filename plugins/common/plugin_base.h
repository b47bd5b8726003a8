/*
 * What debertrt's TensorRT plugins (IPluginV3, TensorRT 10.x and 11.x) share: the op identity and
 * field table (checked against plugins/spec.py through the self-test's output), reading and
 * validating fields, serialization through getFieldsToSerialize, logging through the logger
 * TensorRT hands to setLoggerFinder, and the creator.
 *
 * An op derives from PluginBase and writes only its shape, type and launch methods; its creator is
 * Creator<ItsPlugin>. Every noexcept method that does work catches everything and reports through
 * the logger; field and argument errors are recoverable (a logged error and a failure status or
 * nullptr), never an abort.
 */
#ifndef DEBERTRT_PLUGIN_BASE_H
#define DEBERTRT_PLUGIN_BASE_H

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace debertrt
{
namespace plugin
{

constexpr char const* kPLUGIN_VERSION{"1"};
constexpr char const* kPLUGIN_NAMESPACE{"debertrt"};

constexpr double kNO_BOUND{std::numeric_limits<double>::infinity()};

//! One field: INT32 or FLOAT32, with inclusive bounds (±kNO_BOUND: none). Floats must be finite.
struct FieldDesc
{
    char const* name;
    nvinfer1::PluginFieldType type;
    double minimum;
    double maximum;
};

//! An op's identity and fields, in plugins/spec.py's order.
struct OpDesc
{
    char const* name;
    FieldDesc const* fields;
    size_t nbFields;

    //! Index of a field by name; nbFields when absent.
    size_t find(char const* fieldName) const noexcept;
};

//! Field values of one plugin, stored as the types they are serialized with.
class FieldValues
{
public:
    explicit FieldValues(OpDesc const& op);
    FieldValues(FieldValues const& other);
    FieldValues& operator=(FieldValues const&) = delete;

    int32_t intAt(size_t k) const noexcept
    {
        return mInts[k];
    }
    float floatAt(size_t k) const noexcept
    {
        return mFloats[k];
    }
    //! Fields pointing at this object's storage, for getFieldsToSerialize.
    nvinfer1::PluginFieldCollection const* collection() noexcept;
    //! "name=value ..." in field order.
    std::string describe() const;

    //! Read every field of the op from `fc` and check it against its kind and bounds (and, for ops with
    //! has_c2p/has_p2c, that one of them is 1). Unknown fields are ignored. Empty on success, else why.
    std::string read(nvinfer1::PluginFieldCollection const* fc);

private:
    OpDesc const& mOp;
    std::vector<int32_t> mInts;
    std::vector<float> mFloats;
    std::vector<nvinfer1::PluginField> mSerial;
    nvinfer1::PluginFieldCollection mCollection{};
};

// ---- logging (through the ILoggerFinder given to setLoggerFinder; stderr for warnings without one) ----
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logMessage(nvinfer1::ILogger::Severity severity, char const* op, std::string const& message) noexcept;
void logError(char const* op, std::string const& message) noexcept;
//! Call from inside a catch block only.
void reportException(char const* op, char const* where) noexcept;

// ---- small helpers ----
std::string dimsToString(nvinfer1::Dims const& d);
//! -1 (unknown at build time) matches anything.
bool sameOrUnknown(int64_t a, int64_t b) noexcept;
char const* typeName(nvinfer1::DataType type) noexcept;
//! Element type code of the kernels' C entry points (DEBERTRT_DTYPE_*), -1 for other types.
int32_t kernelType(nvinfer1::DataType type) noexcept;

//! The IPluginV3 parts every op shares: identity, fields, serialization, one output, no workspace.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    PluginBase(OpDesc const& op, FieldValues const& fields);
    PluginBase(PluginBase const& other);
    PluginBase& operator=(PluginBase const&) = delete;
    PluginBase(PluginBase&&) = delete;
    PluginBase& operator=(PluginBase&&) = delete;
    ~PluginBase() noexcept override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    void error(std::string const& message) const noexcept
    {
        logError(mOp.name, message);
    }
    void report(char const* where) const noexcept
    {
        reportException(mOp.name, where);
    }
    //! Refuse a call with the wrong number of inputs/outputs (logged); true when the counts are right.
    bool counts(char const* where, int32_t nbInputs, int32_t expectedInputs, int32_t nbOutputs) const noexcept;

    OpDesc const& mOp;
    FieldValues mFields;

private:
    std::string mDescription;
};

//! IPluginCreatorV3One for a PluginBase subclass `Plugin` with `static OpDesc const& op()` and a
//! constructor taking FieldValues.
template <typename Plugin>
class Creator final : public nvinfer1::IPluginCreatorV3One
{
public:
    Creator() noexcept
    {
        OpDesc const& op = Plugin::op();
        mNames.reserve(op.nbFields);
        for (size_t k = 0; k < op.nbFields; ++k)
        {
            mNames.emplace_back(op.fields[k].name, nullptr, op.fields[k].type, 1);
        }
        mCollection.nbFields = static_cast<int32_t>(mNames.size());
        mCollection.fields = mNames.data();
    }
    char const* getPluginName() const noexcept override
    {
        return Plugin::op().name;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kPLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPLUGIN_NAMESPACE;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            FieldValues values(Plugin::op());
            std::string const why = values.read(fc);
            if (!why.empty())
            {
                logError(Plugin::op().name, std::string{"createPlugin("} + (name != nullptr ? name : "") + "): " + why);
                return nullptr;
            }
            return new Plugin(values);
        }
        catch (...)
        {
            reportException(Plugin::op().name, "createPlugin");
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mNames;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace debertrt

#endif // DEBERTRT_PLUGIN_BASE_H
