/*
 * The shared parts of debertrt's TensorRT plugins: see plugin_base.h.
 */
#include "plugin_base.h"

#include "kernel_api.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <sstream>

using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;

namespace debertrt
{
namespace plugin
{
namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

std::optional<double> readNumber(PluginField const& f)
{
    if (f.data == nullptr || f.length != 1)
    {
        return std::nullopt;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
    case PluginFieldType::kINT64: return static_cast<double>(*static_cast<int64_t const*>(f.data));
    case PluginFieldType::kINT16: return *static_cast<int16_t const*>(f.data);
    case PluginFieldType::kINT8: return *static_cast<int8_t const*>(f.data);
    case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
    case PluginFieldType::kFLOAT64: return *static_cast<double const*>(f.data);
    default: return std::nullopt;
    }
}

bool isIntegerType(PluginFieldType type) noexcept
{
    return type == PluginFieldType::kINT32 || type == PluginFieldType::kINT64 || type == PluginFieldType::kINT16
        || type == PluginFieldType::kINT8;
}

std::string number(double value)
{
    std::ostringstream s;
    s << value;
    return s.str();
}

//! Why `value` is not a valid value of `field` (empty when it is).
std::string checkValue(FieldDesc const& field, PluginFieldType given, double value)
{
    std::string const name{field.name};
    bool const integer = field.type == PluginFieldType::kINT32;
    if (integer && !isIntegerType(given))
    {
        return "field '" + name + "' must be an integer (got PluginFieldType " + std::to_string(static_cast<int>(given))
            + ")";
    }
    if (!std::isfinite(value))
    {
        return "field '" + name + "' must be finite, got " + number(value);
    }
    double const lo = integer ? std::max(field.minimum, static_cast<double>(INT32_MIN)) : field.minimum;
    double const hi = integer ? std::min(field.maximum, static_cast<double>(INT32_MAX)) : field.maximum;
    if (value < lo)
    {
        return "field '" + name + "' must be >= " + number(lo) + ", got " + number(value);
    }
    if (value > hi)
    {
        return "field '" + name + "' must be <= " + number(hi) + ", got " + number(value);
    }
    return {};
}

} // namespace

size_t OpDesc::find(char const* fieldName) const noexcept
{
    size_t k = 0;
    while (k < nbFields && (fieldName == nullptr || std::string{fieldName} != fields[k].name))
    {
        ++k;
    }
    return k;
}

// ---- fields ---------------------------------------------------------------------------
FieldValues::FieldValues(OpDesc const& op)
    : mOp(op)
    , mInts(op.nbFields, 0)
    , mFloats(op.nbFields, 0.0F)
{
}

FieldValues::FieldValues(FieldValues const& other)
    : mOp(other.mOp)
    , mInts(other.mInts)
    , mFloats(other.mFloats)
{
}

std::string FieldValues::read(PluginFieldCollection const* fc)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        return "no field collection";
    }
    std::vector<bool> seen(mOp.nbFields, false);
    for (int32_t f = 0; f < fc->nbFields; ++f)
    {
        PluginField const& field = fc->fields[f];
        size_t const k = mOp.find(field.name);
        if (k == mOp.nbFields)
        {
            logMessage(ILogger::Severity::kVERBOSE, mOp.name,
                std::string{"ignoring unknown field '"} + (field.name != nullptr ? field.name : "") + "'");
            continue;
        }
        std::optional<double> const value = readNumber(field);
        if (!value.has_value())
        {
            return std::string{"field '"} + mOp.fields[k].name + "' must be one number (got PluginFieldType "
                + std::to_string(static_cast<int>(field.type)) + ", length " + std::to_string(field.length) + ")";
        }
        std::string const why = checkValue(mOp.fields[k], field.type, *value);
        if (!why.empty())
        {
            return why;
        }
        mInts[k] = mOp.fields[k].type == PluginFieldType::kINT32 ? static_cast<int32_t>(*value) : 0;
        mFloats[k] = mOp.fields[k].type == PluginFieldType::kFLOAT32 ? static_cast<float>(*value) : 0.0F;
        seen[k] = true;
    }
    for (size_t k = 0; k < mOp.nbFields; ++k)
    {
        if (!seen[k])
        {
            return std::string{"missing required field '"} + mOp.fields[k].name + "'";
        }
    }
    size_t const c2p = mOp.find("has_c2p");
    size_t const p2c = mOp.find("has_p2c");
    if (c2p < mOp.nbFields && p2c < mOp.nbFields && mInts[c2p] == 0 && mInts[p2c] == 0)
    {
        return "at least one of has_c2p and has_p2c must be 1";
    }
    return {};
}

PluginFieldCollection const* FieldValues::collection() noexcept
{
    mSerial.clear();
    for (size_t k = 0; k < mOp.nbFields; ++k)
    {
        FieldDesc const& f = mOp.fields[k];
        void const* data = f.type == PluginFieldType::kINT32 ? static_cast<void const*>(&mInts[k]) : &mFloats[k];
        mSerial.emplace_back(f.name, data, f.type, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mSerial.size());
    mCollection.fields = mSerial.data();
    return &mCollection;
}

std::string FieldValues::describe() const
{
    std::ostringstream s;
    s.precision(9);
    for (size_t k = 0; k < mOp.nbFields; ++k)
    {
        s << (k != 0 ? " " : "") << mOp.fields[k].name << "=";
        if (mOp.fields[k].type == PluginFieldType::kINT32)
        {
            s << mInts[k];
        }
        else
        {
            s << mFloats[k];
        }
    }
    return s.str();
}

// ---- logging -------------------------------------------------------------------------
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> const lock(gLoggerMutex);
    gLoggerFinder = finder;
}

void logMessage(ILogger::Severity severity, char const* op, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string{kPLUGIN_NAMESPACE} + "::" + op + ": " + message;
        ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> const lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (static_cast<int32_t>(severity) <= static_cast<int32_t>(ILogger::Severity::kWARNING))
        {
            std::fprintf(stderr, "[debertrt] %s\n", text.c_str());
        }
    }
    catch (...)
    {
        // Logging must never throw out of a noexcept method.
    }
}

void logError(char const* op, std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, op, message);
}

void reportException(char const* op, char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        logError(op, std::string{where} + ": " + e.what());
    }
    catch (...)
    {
        logError(op, std::string{where} + ": unknown exception");
    }
}

// ---- helpers -------------------------------------------------------------------------
std::string dimsToString(nvinfer1::Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t k = 0; k < d.nbDims; ++k)
    {
        s << (k != 0 ? ", " : "") << d.d[k];
    }
    s << "]";
    return s.str();
}

bool sameOrUnknown(int64_t a, int64_t b) noexcept
{
    return a < 0 || b < 0 || a == b;
}

char const* typeName(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return "FP32";
    case DataType::kHALF: return "FP16";
    case DataType::kBF16: return "BF16";
    case DataType::kINT8: return "INT8";
    case DataType::kINT32: return "INT32";
    case DataType::kINT64: return "INT64";
    case DataType::kBOOL: return "BOOL";
    default: return "an unsupported type";
    }
}

std::string checkTableLength(int64_t tableLen, int64_t seq, bool odd)
{
    if (tableLen >= 0 && seq >= 1 && (tableLen < 2 * seq - 1 || (odd && tableLen % 2 == 0)))
    {
        return "rel_table has " + std::to_string(tableLen) + " entries but sequences of length " + std::to_string(seq)
            + " need " + (odd ? "an odd length >= " : "") + std::to_string(2 * seq - 1)
            + " (build it with max_len >= the longest sequence of the optimization profile)";
    }
    return {};
}

int32_t kernelType(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return DEBERTRT_DTYPE_FLOAT32;
    case DataType::kHALF: return DEBERTRT_DTYPE_FLOAT16;
    case DataType::kBF16: return DEBERTRT_DTYPE_BFLOAT16;
    default: return -1;
    }
}

// ---- plugin base ---------------------------------------------------------------------
PluginBase::PluginBase(OpDesc const& op, FieldValues const& fields)
    : mOp(op)
    , mFields(fields)
    , mDescription(std::string{op.name} + " " + fields.describe())
{
}

PluginBase::PluginBase(PluginBase const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mOp(other.mOp)
    , mFields(other.mFields)
    , mDescription(other.mDescription)
    , mWarned(other.mWarned)
{
}

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* PluginBase::getPluginName() const noexcept
{
    return mOp.name;
}

char const* PluginBase::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* PluginBase::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t PluginBase::getNbOutputs() const noexcept
{
    return 1;
}

size_t PluginBase::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* PluginBase::getTimingCacheID() noexcept
{
    return mDescription.c_str(); // the fields decide the kernel's behaviour and speed
}

char const* PluginBase::getMetadataString() noexcept
{
    return mDescription.c_str();
}

nvinfer1::IPluginV3* PluginBase::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* PluginBase::getFieldsToSerialize() noexcept
{
    return guarded<PluginFieldCollection const*>(
        "getFieldsToSerialize", nullptr, [this] { return mFields.collection(); });
}

bool PluginBase::counts(char const* where, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    int32_t const expectedInputs = inputLayout().nbInputs;
    if (nbInputs == expectedInputs && nbOutputs == 1)
    {
        return true;
    }
    try
    {
        error(std::string{where} + ": expected " + std::to_string(expectedInputs) + " inputs and 1 output, got "
            + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    }
    catch (...)
    {
        // error() never throws; building its message might (out of memory)
    }
    return false;
}

PluginBase::InputLayout PluginBase::inputLayout() const noexcept
{
    auto const switchedOn = [this](char const* field) {
        size_t const k = mOp.find(field);
        return k < mOp.nbFields && mFields.intAt(k) != 0;
    };
    InputLayout l{-1, -1, mOp.leadingInputs, 0};
    if (switchedOn("has_c2p"))
    {
        l.c2p = l.trailing++;
    }
    if (switchedOn("has_p2c"))
    {
        l.p2c = l.trailing++;
    }
    l.nbInputs = l.trailing + mOp.trailingInputs;
    return l;
}

// ---- the IPluginV3 methods around the op's hooks ----------------------------------------
namespace
{
Dims const& dimsOf(DynamicPluginTensorDesc const& desc) noexcept
{
    return desc.desc.dims;
}
Dims const& dimsOf(PluginTensorDesc const& desc) noexcept
{
    return desc.dims;
}
template <typename Desc>
std::vector<Dims> inputDims(Desc const* in, int32_t nbInputs)
{
    std::vector<Dims> dims;
    for (int32_t k = 0; k < nbInputs; ++k)
    {
        dims.push_back(dimsOf(in[k]));
    }
    return dims;
}
} // namespace

void PluginBase::warnOnce(std::string const& message) noexcept
{
    if (!mWarned)
    {
        mWarned = true;
        logMessage(ILogger::Severity::kWARNING, mOp.name, message);
    }
}

int32_t PluginBase::status(std::string const& why, char const* where) const
{
    if (why.empty())
    {
        return 0;
    }
    error(where + why);
    return 1;
}

int32_t PluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded("getOutputDataTypes", 1, [&] {
        if (outputTypes == nullptr || inputTypes == nullptr || !counts("getOutputDataTypes", nbInputs, nbOutputs))
        {
            return 1;
        }
        return status(outputType(inputTypes, outputTypes[0]));
    });
}

int32_t PluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    return guarded("getOutputShapes", 1, [&] {
        if (inputs == nullptr || outputs == nullptr || nbShapeInputs != 0
            || !counts("getOutputShapes", nbInputs, nbOutputs))
        {
            return 1;
        }
        if (status(outputShape(inputs, outputs[0], exprBuilder)) != 0)
        {
            return 1;
        }
        auto const end = outputs[0].d + outputs[0].nbDims;
        return std::find(outputs[0].d, end, nullptr) == end ? 0 : 1; // the builder has said why
    });
}

bool PluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guarded("supportsFormatCombination", false, [&] {
        return inOut != nullptr && nbInputs == inputLayout().nbInputs && nbOutputs == 1 && pos >= 0
            && pos < nbInputs + nbOutputs && inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR
            && supportsType(pos, inOut);
    });
}

template <typename Desc, typename Check>
int32_t PluginBase::checkShapes(char const* where, char const* prefix, Desc const* in, int32_t nbInputs,
    Desc const* out, int32_t nbOutputs, Check const& check) const noexcept
{
    return guarded(where, 1, [&] {
        if (in == nullptr || out == nullptr || !counts(where, nbInputs, nbOutputs))
        {
            return 1;
        }
        std::vector<Dims> const dims = inputDims(in, nbInputs);
        std::string const why = checkDims(dims.data(), &dimsOf(out[0]));
        return status(why.empty() ? check(dims.data()) : why, prefix);
    });
}

int32_t PluginBase::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return checkShapes("configurePlugin", "", in, nbInputs, out, nbOutputs,
        [&](Dims const* dims) { return checkBuild(in, dims); });
}

int32_t PluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return checkShapes("onShapeChange", "onShapeChange: ", in, nbInputs, out, nbOutputs,
        [&](Dims const* /*dims*/) { return checkRuntime(in); });
}

int32_t PluginBase::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    return guarded("enqueue", 1, [&] {
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            return status("enqueue: null descriptor or buffer array");
        }
        return status(launch(inputDesc, inputs, outputs, stream));
    });
}

} // namespace plugin
} // namespace debertrt
