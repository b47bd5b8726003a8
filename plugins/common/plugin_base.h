/*
 * What debertrt's TensorRT plugins (IPluginV3, TensorRT 10.x and 11.x) share: the op identity and
 * field table (checked against plugins/spec.py through the self-test's output), reading and
 * validating fields, serialization through getFieldsToSerialize, logging through the logger
 * TensorRT hands to setLoggerFinder, and the creator.
 *
 * An op describes itself in an OpDesc (name, fields, fixed inputs), derives from
 * Plugin<ItsPlugin, itsOpDesc> and writes only its hooks (types, shapes, the checks of
 * configurePlugin/onShapeChange, the launch); its creator is Creator<ItsPlugin>, which its header
 * hands out.
 * PluginBase's IPluginV3 methods check pointers and input/output counts, call the hooks and turn
 * what they return into a status: every noexcept method that does work catches everything and
 * reports through the logger; field and argument errors are recoverable (a logged error and a
 * failure status or nullptr), never an abort.
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

// The TensorRT types every op's code speaks of.
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

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

//! An op's identity, fields (in plugins/spec.py's order) and inputs: `leadingInputs` fixed ones, then
//! those has_c2p and has_p2c switch on, then `trailingInputs` fixed ones.
struct OpDesc
{
    char const* name;
    FieldDesc const* fields;
    size_t nbFields;
    int32_t leadingInputs;
    int32_t trailingInputs;

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
//! Why rel_table (`tableLen` entries, -1: unknown) cannot serve sequences of length `seq`: it covers
//! relative positions (-S, S), so it needs 2*seq - 1 entries or more (an odd number where `odd`).
//! Empty when it can.
std::string checkTableLength(int64_t tableLen, int64_t seq, bool odd);
//! Element type code of the kernels' C entry points (DEBERTRT_DTYPE_*), -1 for other types.
int32_t kernelType(nvinfer1::DataType type) noexcept;

//! The IPluginV3 parts every op shares: identity, fields, serialization, one output, no workspace,
//! and the argument checks and error handling around the op's hooks.
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

protected:
    // ---- the op's hooks: called with non-null arrays of the right length; a string is empty when
    // all is well, else the error to log ----
    //! The output type for these input types.
    virtual std::string outputType(nvinfer1::DataType const* inputTypes, nvinfer1::DataType& output) const = 0;
    //! The output shape; a null expression in it fails the call (the builder has said why).
    virtual std::string outputShape(
        nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs& output, nvinfer1::IExprBuilder& exprBuilder) const
        = 0;
    //! Whether input or output `pos` may have its type (the format is already known to be linear).
    virtual bool supportsType(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut) = 0;
    //! Structural shape check of the inputs and the output; -1 (unknown at build time) matches anything.
    virtual std::string checkDims(nvinfer1::Dims const* in, nvinfer1::Dims const* out) const = 0;
    //! configurePlugin's checks beyond checkDims (profile ranges, types, the kernel for this GPU).
    virtual std::string checkBuild(nvinfer1::DynamicPluginTensorDesc const* in, nvinfer1::Dims const* dims) const = 0;
    //! onShapeChange's checks beyond checkDims, and what to prepare before enqueue.
    virtual std::string checkRuntime(nvinfer1::PluginTensorDesc const* in) const = 0;
    //! Launch on `stream`; the error starts with "enqueue: ".
    virtual std::string launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
        void* const* outputs, cudaStream_t stream) const = 0;

    //! Input positions for this field set: those has_c2p and has_p2c switch on (-1: off), the first
    //! trailing input, and the count.
    struct InputLayout
    {
        int32_t c2p;
        int32_t p2c;
        int32_t trailing;
        int32_t nbInputs;
    };
    InputLayout inputLayout() const noexcept;

    void error(std::string const& message) const noexcept
    {
        logError(mOp.name, message);
    }
    void report(char const* where) const noexcept
    {
        reportException(mOp.name, where);
    }
    //! Refuse a call with the wrong number of inputs/outputs (logged); true when the counts are right.
    bool counts(char const* where, int32_t nbInputs, int32_t nbOutputs) const noexcept;
    //! Log `message` as a warning the first time this plugin calls warnOnce (supportsFormatCombination
    //! is asked about every candidate type: one line says why one is refused).
    void warnOnce(std::string const& message) noexcept;
    //! 0 when `why` is empty, else 1 with `where` + `why` logged as an error.
    int32_t status(std::string const& why, char const* where = "") const;
    //! `body()`, or `failure` with the exception logged as one from `where`: what every noexcept
    //! method that does work runs in.
    template <typename Result, typename Body>
    Result guarded(char const* where, Result failure, Body const& body) const noexcept
    {
        try
        {
            return body();
        }
        catch (...)
        {
            report(where);
        }
        return failure;
    }

    OpDesc const& mOp;
    FieldValues mFields;

private:
    //! configurePlugin and onShapeChange: counts, checkDims, then `check(inputDims)`; errors logged
    //! after `prefix`.
    template <typename Desc, typename Check>
    int32_t checkShapes(char const* where, char const* prefix, Desc const* in, int32_t nbInputs, Desc const* out,
        int32_t nbOutputs, Check const& check) const noexcept;

    std::string mDescription;
    bool mWarned{false};
};

//! The base of op `Op` (described by `kOp`): what needs its type, construction and clone.
template <typename Op, OpDesc const& kOp>
class Plugin : public PluginBase
{
public:
    explicit Plugin(FieldValues const& fields)
        : PluginBase(kOp, fields)
    {
    }

    static OpDesc const& op() noexcept
    {
        return kOp;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        return guarded<nvinfer1::IPluginV3*>(
            "clone", nullptr, [this] { return new Op(static_cast<Op const&>(*this)); });
    }
};

//! IPluginCreatorV3One for op `Op` (a Plugin<Op, ...> subclass).
template <typename Op>
class Creator final : public nvinfer1::IPluginCreatorV3One
{
public:
    Creator() noexcept
    {
        OpDesc const& op = Op::op();
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
        return Op::op().name;
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
            FieldValues values(Op::op());
            std::string const why = values.read(fc);
            if (!why.empty())
            {
                logError(Op::op().name, std::string{"createPlugin("} + (name != nullptr ? name : "") + "): " + why);
                return nullptr;
            }
            return new Op(values);
        }
        catch (...)
        {
            reportException(Op::op().name, "createPlugin");
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
