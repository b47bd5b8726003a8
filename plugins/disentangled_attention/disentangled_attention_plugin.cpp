/*
 * DisentangledAttention TensorRT plugin (IPluginV3 / IPluginCreatorV3One).
 *
 * Written for TensorRT 10.x and 11.x. Every noexcept method that does any work catches
 * everything and reports through the TensorRT logger (methods that only return a
 * constant cannot throw); argument and field errors are recoverable: a logged error and
 * a failure status / nullptr, never an abort.
 *
 * Two ways to register, chosen when compiling this file:
 *  - default: the library exports getCreators() and setLoggerFinder() for
 *    IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, --setPluginsToSerialize,
 *    TensorRT-RTX); it needs no TensorRT symbol at link or load time.
 *  - DEBERTRT_STATIC_REGISTRATION=1: the creator registers itself when the library is
 *    loaded (what REGISTER_TENSORRT_PLUGIN does, but under our namespace: the macro
 *    passes ""), for ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins.
 * One library never does both: loadLibrary refuses a library whose creator is already
 * registered, and static registration would register it during loadLibrary's own dlopen.
 */
#include "disentangled_attention_plugin.h"

#include "disentangled_attention_kernel.cuh"

#include <cmath>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>

#if defined(_WIN32)
#define DEBERTRT_PLUGIN_API __declspec(dllexport)
#else
#define DEBERTRT_PLUGIN_API __attribute__((visibility("default")))
#endif

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace debertrt
{
namespace plugin
{
namespace
{

// ---- identity and fields: must match plugins/spec.py (checked by tests/test_plugin_reference.py) ----
constexpr char const* kPLUGIN_NAME{"DisentangledAttention"};
constexpr char const* kPLUGIN_VERSION{"1"};
constexpr char const* kPLUGIN_NAMESPACE{"debertrt"};

struct FieldDesc
{
    char const* name;
    PluginFieldType type;
};

constexpr FieldDesc kFIELDS[] = {
    {"position_buckets", PluginFieldType::kINT32},
    {"max_relative_positions", PluginFieldType::kINT32},
    {"pos_scale", PluginFieldType::kFLOAT32},
    {"has_c2p", PluginFieldType::kINT32},
    {"has_p2c", PluginFieldType::kINT32},
};
// ---- end of identity and fields ----

constexpr size_t kNbFields = sizeof(kFIELDS) / sizeof(kFIELDS[0]);
static_assert(kNbFields == kDisentangledAttentionNbFields, "field table and the header's field storage disagree");

// ---- logging -------------------------------------------------------------------------
std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string{kPLUGIN_NAMESPACE} + "::" + kPLUGIN_NAME + ": " + message;
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

void logError(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
}

//! Call from inside a catch block only.
void reportException(char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        logError(std::string{where} + ": " + e.what());
    }
    catch (...)
    {
        logError(std::string{where} + ": unknown exception");
    }
}

// ---- helpers -------------------------------------------------------------------------
bool isFloatIo(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
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

std::string const kINT8_REFUSED{
    "INT8 I/O is not supported: the attention scores are float tensors (FP32, FP16 or BF16); keep "
    "quantization (Q/DQ) outside the plugin and feed it a float type"};

//! Input positions for a field set: c2c is 0, the table is last.
struct Layout
{
    int32_t c2p{-1};
    int32_t p2c{-1};
    int32_t table{-1};
    int32_t nbInputs{0};
};

Layout layoutOf(DisentangledAttentionParameters const& p) noexcept
{
    Layout l;
    int32_t next = 1;
    if (p.hasC2p != 0)
    {
        l.c2p = next++;
    }
    if (p.hasP2c != 0)
    {
        l.p2c = next++;
    }
    l.table = next++;
    l.nbInputs = next;
    return l;
}

std::string dimsToString(Dims const& d)
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

//! Structural shape check; -1 (unknown at build time) matches anything. Empty = fine.
std::string checkDims(Layout const& l, Dims const* in, Dims const* out)
{
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

std::optional<int64_t> readInt(PluginField const& f)
{
    if (f.data == nullptr || f.length != 1)
    {
        return std::nullopt;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
    case PluginFieldType::kINT64: return *static_cast<int64_t const*>(f.data);
    case PluginFieldType::kINT16: return *static_cast<int16_t const*>(f.data);
    case PluginFieldType::kINT8: return *static_cast<int8_t const*>(f.data);
    default: return std::nullopt;
    }
}

std::optional<double> readFloat(PluginField const& f)
{
    if (f.data == nullptr || f.length != 1)
    {
        return std::nullopt;
    }
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
    case PluginFieldType::kFLOAT64: return *static_cast<double const*>(f.data);
    default: return std::nullopt;
    }
}

} // namespace

// ---- plugin --------------------------------------------------------------------------
DisentangledAttentionPlugin::DisentangledAttentionPlugin(DisentangledAttentionParameters const& params)
    : mParams(params)
{
    describe();
}

DisentangledAttentionPlugin::DisentangledAttentionPlugin(DisentangledAttentionPlugin const& other)
    : nvinfer1::IPluginV3(other)
    , nvinfer1::IPluginV3OneCore(other)
    , nvinfer1::IPluginV3OneBuild(other)
    , nvinfer1::IPluginV3OneRuntime(other)
    , mParams(other.mParams)
{
    describe();
}

void DisentangledAttentionPlugin::describe()
{
    std::ostringstream id;
    id << kPLUGIN_NAMESPACE << "::" << kPLUGIN_NAME << "/" << kPLUGIN_VERSION << "/c2p=" << mParams.hasC2p
       << "/p2c=" << mParams.hasP2c;
    mTimingCacheId = id.str();
    std::ostringstream meta;
    meta << "position_buckets=" << mParams.positionBuckets
         << " max_relative_positions=" << mParams.maxRelativePositions << " pos_scale=" << mParams.posScale
         << " has_c2p=" << mParams.hasC2p << " has_p2c=" << mParams.hasP2c;
    mMetadata = meta.str();
}

nvinfer1::IPluginCapability* DisentangledAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        logError("unknown plugin capability type " + std::to_string(static_cast<int32_t>(type)));
    }
    catch (...)
    {
        reportException("getCapabilityInterface");
    }
    return nullptr;
}

nvinfer1::IPluginV3* DisentangledAttentionPlugin::clone() noexcept
{
    try
    {
        return new DisentangledAttentionPlugin(*this);
    }
    catch (...)
    {
        reportException("clone");
    }
    return nullptr;
}

char const* DisentangledAttentionPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* DisentangledAttentionPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* DisentangledAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t DisentangledAttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t DisentangledAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != l.nbInputs)
        {
            logError("getOutputDataTypes: expected " + std::to_string(l.nbInputs) + " inputs and 1 output, got "
                + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
            return 1;
        }
        if (!isFloatIo(inputTypes[0]))
        {
            logError(inputTypes[0] == DataType::kINT8
                    ? kINT8_REFUSED
                    : std::string{"c2c is "} + typeName(inputTypes[0]) + "; supported: FP32, FP16, BF16");
            return 1;
        }
        for (int32_t which : {l.c2p, l.p2c})
        {
            if (which >= 0 && inputTypes[which] != inputTypes[0])
            {
                logError(std::string{"positional scores are "} + typeName(inputTypes[which]) + " but c2c is "
                    + typeName(inputTypes[0]) + "; all float inputs must have one type");
                return 1;
            }
        }
        if (inputTypes[l.table] != DataType::kINT32)
        {
            logError(std::string{"rel_table must be INT32, got "} + typeName(inputTypes[l.table]));
            return 1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (...)
    {
        reportException("getOutputDataTypes");
    }
    return 1;
}

int32_t DisentangledAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
        if (inputs == nullptr || outputs == nullptr || nbInputs != l.nbInputs || nbOutputs != 1
            || nbShapeInputs != 0)
        {
            logError("getOutputShapes: expected " + std::to_string(l.nbInputs) + " inputs and 1 output, got "
                + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
            return 1;
        }
        if (inputs[0].nbDims < 2)
        {
            logError("c2c must have rank >= 2 ([..., Sq, Sk]), got rank " + std::to_string(inputs[0].nbDims));
            return 1;
        }
        outputs[0] = inputs[0]; // out has c2c's (dynamic) shape
        return 0;
    }
    catch (...)
    {
        reportException("getOutputShapes");
    }
    return 1;
}

bool DisentangledAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
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
                logMessage(ILogger::Severity::kWARNING, kINT8_REFUSED);
            }
            return isFloatIo(desc.type);
        }
        // Positional inputs and the output: c2c's type.
        return desc.type == inOut[0].desc.type;
    }
    catch (...)
    {
        reportException("supportsFormatCombination");
    }
    return false;
}

int32_t DisentangledAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
        if (in == nullptr || out == nullptr || nbInputs != l.nbInputs || nbOutputs != 1)
        {
            logError("configurePlugin: expected " + std::to_string(l.nbInputs) + " inputs and 1 output, got "
                + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
            return 1;
        }
        Dims dims[4];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].desc.dims;
        }
        std::string why = checkDims(l, dims, &out[0].desc.dims);
        if (why.empty())
        {
            Dims const& maxC2c = in[0].max;
            int32_t const rank = maxC2c.nbDims;
            why = rank >= 2 ? checkTableLength(in[l.table].min.d[0], maxC2c.d[rank - 2], maxC2c.d[rank - 1])
                            : std::string{};
        }
        if (!why.empty())
        {
            logError(why);
            return 1;
        }
        if (in[0].desc.type == DataType::kINT8)
        {
            logError(kINT8_REFUSED);
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        reportException("configurePlugin");
    }
    return 1;
}

size_t DisentangledAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/,
    int32_t /*nbInputs*/, DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* DisentangledAttentionPlugin::getTimingCacheID() noexcept
{
    return mTimingCacheId.c_str();
}

char const* DisentangledAttentionPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t DisentangledAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
        if (in == nullptr || out == nullptr || nbInputs != l.nbInputs || nbOutputs != 1)
        {
            logError("onShapeChange: expected " + std::to_string(l.nbInputs) + " inputs and 1 output");
            return 1;
        }
        Dims dims[4];
        for (int32_t k = 0; k < nbInputs; ++k)
        {
            dims[k] = in[k].dims;
        }
        std::string why = checkDims(l, dims, &out[0].dims);
        if (why.empty())
        {
            int32_t const rank = in[0].dims.nbDims;
            why = checkTableLength(in[l.table].dims.d[0], in[0].dims.d[rank - 2], in[0].dims.d[rank - 1]);
        }
        if (!why.empty())
        {
            logError(why);
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        reportException("onShapeChange");
    }
    return 1;
}

int32_t DisentangledAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Layout const l = layoutOf(mParams);
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            logError("enqueue: null descriptor or buffer array");
            return 1;
        }
        Dims const& c2c = inputDesc[0].dims;
        int32_t const rank = c2c.nbDims;
        if (rank < 2)
        {
            logError("enqueue: c2c must have rank >= 2");
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
            logError("enqueue: a dimension exceeds INT32_MAX");
            return 1;
        }
        int32_t const dtype = kernelType(inputDesc[0].type);
        if (dtype < 0)
        {
            logError(inputDesc[0].type == DataType::kINT8 ? kINT8_REFUSED
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
        args.posScale = mParams.posScale;
        cudaError_t const status = disentangledAttention(dtype, args, stream);
        if (status != cudaSuccess)
        {
            logError(std::string{"enqueue: kernel launch failed: "} + cudaGetErrorName(status) + " ("
                + cudaGetErrorString(status) + ") for c2c " + dimsToString(c2c) + ", 2*span " + std::to_string(width)
                + ", rel_table length " + std::to_string(tableLen));
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        reportException("enqueue");
    }
    return 1;
}

nvinfer1::IPluginV3* DisentangledAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* DisentangledAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields[0] = PluginField{kFIELDS[0].name, &mParams.positionBuckets, kFIELDS[0].type, 1};
        mSerialFields[1] = PluginField{kFIELDS[1].name, &mParams.maxRelativePositions, kFIELDS[1].type, 1};
        mSerialFields[2] = PluginField{kFIELDS[2].name, &mParams.posScale, kFIELDS[2].type, 1};
        mSerialFields[3] = PluginField{kFIELDS[3].name, &mParams.hasC2p, kFIELDS[3].type, 1};
        mSerialFields[4] = PluginField{kFIELDS[4].name, &mParams.hasP2c, kFIELDS[4].type, 1};
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (...)
    {
        reportException("getFieldsToSerialize");
    }
    return nullptr;
}

// ---- creator -------------------------------------------------------------------------
DisentangledAttentionPluginCreator::DisentangledAttentionPluginCreator() noexcept
{
    for (size_t k = 0; k < kNbFields; ++k)
    {
        mFields[k] = PluginField{kFIELDS[k].name, nullptr, kFIELDS[k].type, 1};
    }
    mFieldCollection.nbFields = static_cast<int32_t>(kNbFields);
    mFieldCollection.fields = mFields.data();
}

char const* DisentangledAttentionPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* DisentangledAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* DisentangledAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* DisentangledAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* DisentangledAttentionPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = std::string{"createPlugin("} + (name != nullptr ? name : "") + "): ";
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logError(layer + "no field collection");
            return nullptr;
        }
        std::optional<int64_t> ints[kNbFields];
        std::optional<double> posScale;
        for (int32_t f = 0; f < fc->nbFields; ++f)
        {
            PluginField const& field = fc->fields[f];
            std::string const fieldName = field.name != nullptr ? field.name : "";
            size_t k = 0;
            while (k < kNbFields && fieldName != kFIELDS[k].name)
            {
                ++k;
            }
            if (k == kNbFields)
            {
                logMessage(ILogger::Severity::kVERBOSE, layer + "ignoring unknown field '" + fieldName + "'");
                continue;
            }
            bool const isFloat = kFIELDS[k].type == PluginFieldType::kFLOAT32;
            bool const read = isFloat ? (posScale = readFloat(field)).has_value() : (ints[k] = readInt(field)).has_value();
            if (!read)
            {
                logError(layer + "field '" + fieldName + "' must be one " + (isFloat ? "float" : "integer")
                    + " value (got type " + std::to_string(static_cast<int32_t>(field.type)) + ", length "
                    + std::to_string(field.length) + ")");
                return nullptr;
            }
        }
        for (size_t k = 0; k < kNbFields; ++k)
        {
            bool const isFloat = kFIELDS[k].type == PluginFieldType::kFLOAT32;
            if (isFloat ? !posScale.has_value() : !ints[k].has_value())
            {
                logError(layer + "missing required field '" + kFIELDS[k].name + "'");
                return nullptr;
            }
        }
        // kFIELDS order: position_buckets, max_relative_positions, pos_scale, has_c2p, has_p2c.
        int64_t const positionBuckets = *ints[0];
        int64_t const maxRelativePositions = *ints[1];
        int64_t const hasC2p = *ints[3];
        int64_t const hasP2c = *ints[4];
        std::string why;
        if (positionBuckets < 0 || positionBuckets > INT32_MAX)
        {
            why = "position_buckets must be >= 0, got " + std::to_string(positionBuckets);
        }
        else if (maxRelativePositions < 1 || maxRelativePositions > INT32_MAX)
        {
            why = "max_relative_positions must be >= 1, got " + std::to_string(maxRelativePositions);
        }
        else if ((hasC2p != 0 && hasC2p != 1) || (hasP2c != 0 && hasP2c != 1))
        {
            why = "has_c2p and has_p2c must be 0 or 1";
        }
        else if (hasC2p == 0 && hasP2c == 0)
        {
            why = "at least one of has_c2p and has_p2c must be 1";
        }
        else if (!std::isfinite(*posScale))
        {
            why = "pos_scale must be finite";
        }
        if (!why.empty())
        {
            logError(layer + why);
            return nullptr;
        }
        DisentangledAttentionParameters params;
        params.positionBuckets = static_cast<int32_t>(positionBuckets);
        params.maxRelativePositions = static_cast<int32_t>(maxRelativePositions);
        params.posScale = static_cast<float>(*posScale);
        params.hasC2p = static_cast<int32_t>(hasC2p);
        params.hasP2c = static_cast<int32_t>(hasP2c);
        return new DisentangledAttentionPlugin(params);
    }
    catch (...)
    {
        reportException("createPlugin");
    }
    return nullptr;
}

} // namespace plugin
} // namespace debertrt

// ---- registration --------------------------------------------------------------------
#if defined(DEBERTRT_STATIC_REGISTRATION) && DEBERTRT_STATIC_REGISTRATION

namespace
{
class StaticRegistration
{
public:
    StaticRegistration() noexcept
    {
        using debertrt::plugin::kPLUGIN_NAMESPACE;
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(mCreator, kPLUGIN_NAMESPACE))
        {
            debertrt::plugin::logMessage(ILogger::Severity::kWARNING,
                "could not register the plugin creator (already registered by another library?)");
        }
    }

private:
    debertrt::plugin::DisentangledAttentionPluginCreator mCreator;
};

StaticRegistration gStaticRegistration;
} // namespace

#else

extern "C"
{
    DEBERTRT_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
    {
        static debertrt::plugin::DisentangledAttentionPluginCreator creator;
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
        nbCreators = 1;
        return creators;
    }

    DEBERTRT_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> const lock(debertrt::plugin::gLoggerMutex);
        debertrt::plugin::gLoggerFinder = finder;
    }
}

#endif
