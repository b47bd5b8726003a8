/*
 * Host-only check of the DisentangledAttention TensorRT plugin library, with no TensorRT
 * library and no GPU: it loads libdebertrt_plugins.so the way IPluginRegistry::loadLibrary
 * does (dlopen, setLoggerFinder, getCreators) and drives the creator and the plugin's
 * build/runtime methods by hand, checking results and logged errors (no kernel launch).
 *
 *   debertrt_plugin_selftest <libdebertrt_plugins.so>
 *       prints "field <name> <type>" per creator field, then PASS/FAIL lines
 *   debertrt_plugin_selftest --static <libdebertrt_plugins_static.so> <stub libnvinfer.so>
 *       loads the stub registry (testing/nvinfer_stub.cpp), then the static flavor, and checks
 *       that loading registered exactly our creator under namespace "debertrt"
 *
 * Exit: 0 all passed, 1 a check failed, 2 usage or load error.
 */
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;
int gChecks = 0;

void expect(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

class RecordingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        messages.emplace_back(static_cast<int32_t>(severity), msg != nullptr ? msg : "");
    }
    //! Whether a message at `severity` containing `text` was logged since the last clear().
    bool saw(Severity severity, char const* text) const
    {
        for (auto const& m : messages)
        {
            if (m.first == static_cast<int32_t>(severity) && m.second.find(text) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    void clear()
    {
        messages.clear();
    }
    std::vector<std::pair<int32_t, std::string>> messages;
};

class Finder final : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ~Finder() override = default;
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

class NullExprBuilder final : public IExprBuilder
{
public:
    NullExprBuilder()
    {
        mImpl = nullptr; // never called: the plugin's output shape is its first input's
    }
    ~NullExprBuilder() noexcept override = default;
};

char const* fieldTypeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kFLOAT32: return "float32";
    default: return "other";
    }
}

struct Fields
{
    int32_t positionBuckets{256};
    int32_t maxRelativePositions{512};
    float posScale{0.125F};
    int32_t hasC2p{1};
    int32_t hasP2c{1};
    std::vector<PluginField> list;
    PluginFieldCollection fc{};

    PluginFieldCollection const* collection(char const* skip = nullptr)
    {
        list.clear();
        auto add = [&](char const* name, void const* data, PluginFieldType type) {
            if (skip == nullptr || std::strcmp(skip, name) != 0)
            {
                list.emplace_back(name, data, type, 1);
            }
        };
        add("position_buckets", &positionBuckets, PluginFieldType::kINT32);
        add("max_relative_positions", &maxRelativePositions, PluginFieldType::kINT32);
        add("pos_scale", &posScale, PluginFieldType::kFLOAT32);
        add("has_c2p", &hasC2p, PluginFieldType::kINT32);
        add("has_p2c", &hasP2c, PluginFieldType::kINT32);
        add("plugin_namespace", "debertrt", PluginFieldType::kCHAR); // what an ONNX node also carries
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return &fc;
    }
};

Dims makeDims(std::initializer_list<int64_t> values)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    int32_t k = 0;
    for (int64_t v : values)
    {
        d.d[k++] = v;
    }
    return d;
}

DynamicPluginTensorDesc dynDesc(Dims const& dims, DataType type, Dims const& maxDims)
{
    DynamicPluginTensorDesc desc{};
    desc.desc.dims = dims;
    desc.desc.type = type;
    desc.desc.format = TensorFormat::kLINEAR;
    desc.min = maxDims;
    desc.opt = maxDims;
    desc.max = maxDims;
    return desc;
}

PluginTensorDesc desc(Dims const& dims, DataType type)
{
    PluginTensorDesc d{};
    d.dims = dims;
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    return d;
}

int runDynamic(char const* path)
{
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("cannot load %s: %s\n", path, dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        std::printf("FAIL %s does not export getCreators and setLoggerFinder\n", path);
        return 1;
    }
    RecordingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    expect(nbCreators == 1 && creators != nullptr && creators[0] != nullptr, "getCreators returns one creator");
    if (gFailures != 0)
    {
        return 1;
    }
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    expect(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is an IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    std::printf("name %s\nversion %s\nnamespace %s\n", creator->getPluginName(), creator->getPluginVersion(),
        creator->getPluginNamespace());
    PluginFieldCollection const* names = creator->getFieldNames();
    expect(names != nullptr && names->nbFields == 5, "getFieldNames lists 5 fields");
    for (int32_t k = 0; names != nullptr && k < names->nbFields; ++k)
    {
        std::printf("field %s %s\n", names->fields[k].name, fieldTypeName(names->fields[k].type));
    }

    // ---- createPlugin: valid, then recoverable errors ----
    Fields fields;
    IPluginV3* plugin = creator->createPlugin("layer0", fields.collection(), TensorRTPhase::kBUILD);
    expect(plugin != nullptr, "createPlugin with valid fields");
    if (plugin == nullptr)
    {
        return 1;
    }
    for (char const* name : {"position_buckets", "max_relative_positions", "pos_scale", "has_c2p", "has_p2c"})
    {
        logger.clear();
        IPluginV3* bad = creator->createPlugin("layer0", fields.collection(name), TensorRTPhase::kBUILD);
        expect(bad == nullptr && logger.saw(ILogger::Severity::kERROR, "missing required field"),
            std::string{"missing field "} + name + " is a logged error");
        delete bad;
    }
    {
        Fields none;
        none.hasC2p = 0;
        none.hasP2c = 0;
        logger.clear();
        IPluginV3* bad = creator->createPlugin("layer0", none.collection(), TensorRTPhase::kBUILD);
        expect(bad == nullptr && logger.saw(ILogger::Severity::kERROR, "at least one"), "no positional input refused");
        delete bad;
        Fields negative;
        negative.positionBuckets = -1;
        bad = creator->createPlugin("layer0", negative.collection(), TensorRTPhase::kBUILD);
        expect(bad == nullptr, "negative position_buckets refused");
        delete bad;
        Fields flag;
        flag.hasC2p = 2;
        bad = creator->createPlugin("layer0", flag.collection(), TensorRTPhase::kBUILD);
        expect(bad == nullptr, "has_c2p = 2 refused");
        delete bad;
        Fields wrongType;
        wrongType.collection();
        wrongType.list[0].type = PluginFieldType::kFLOAT32; // position_buckets given as a float
        logger.clear();
        bad = creator->createPlugin("layer0", &wrongType.fc, TensorRTPhase::kBUILD);
        expect(bad == nullptr && logger.saw(ILogger::Severity::kERROR, "position_buckets"), "wrong field type refused");
        delete bad;
        expect(creator->createPlugin("layer0", nullptr, TensorRTPhase::kBUILD) == nullptr, "null field collection");
    }

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    expect(core != nullptr && build != nullptr && runtime != nullptr, "all three capabilities");
    if (core == nullptr || build == nullptr || runtime == nullptr)
    {
        return 1;
    }
    expect(std::strcmp(core->getPluginName(), creator->getPluginName()) == 0
            && std::strcmp(core->getPluginVersion(), creator->getPluginVersion()) == 0
            && std::strcmp(core->getPluginNamespace(), creator->getPluginNamespace()) == 0,
        "plugin and creator identity agree");
    expect(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0
            && std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
            && std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0,
        "capability interfaces report their kinds");
    expect(build->getNbOutputs() == 1, "one output");

    // ---- types ----
    DataType outType = DataType::kFLOAT;
    DataType const half[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, half, 4) == 0 && outType == DataType::kHALF, "FP16 in, FP16 out");
    DataType const bf16[4] = {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, bf16, 4) == 0 && outType == DataType::kBF16, "BF16 in, BF16 out");
    DataType const int8[4] = {DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT32};
    logger.clear();
    expect(build->getOutputDataTypes(&outType, 1, int8, 4) != 0 && logger.saw(ILogger::Severity::kERROR, "INT8"),
        "INT8 I/O refused with a logged error");
    DataType const mixed[4] = {DataType::kHALF, DataType::kFLOAT, DataType::kHALF, DataType::kINT32};
    expect(build->getOutputDataTypes(&outType, 1, mixed, 4) != 0, "mixed float types refused");
    expect(build->getOutputDataTypes(&outType, 1, half, 3) != 0, "wrong input count refused");

    // ---- formats ----
    Dims const c2cDims = makeDims({2, 12, 64, 64});
    Dims const posDims = makeDims({2, 12, 64, 512});
    Dims const tableDims = makeDims({4095});
    DynamicPluginTensorDesc io[5] = {dynDesc(c2cDims, DataType::kHALF, c2cDims),
        dynDesc(posDims, DataType::kHALF, posDims), dynDesc(posDims, DataType::kHALF, posDims),
        dynDesc(tableDims, DataType::kINT32, tableDims), dynDesc(c2cDims, DataType::kHALF, c2cDims)};
    for (int32_t pos = 0; pos < 5; ++pos)
    {
        expect(build->supportsFormatCombination(pos, io, 4, 1), "linear FP16/INT32 supported at " + std::to_string(pos));
    }
    io[0].desc.type = DataType::kINT8;
    logger.clear();
    expect(!build->supportsFormatCombination(0, io, 4, 1) && logger.saw(ILogger::Severity::kWARNING, "INT8"),
        "INT8 c2c refused with a logged message");
    io[0].desc.type = DataType::kHALF;
    io[1].desc.type = DataType::kFLOAT;
    expect(!build->supportsFormatCombination(1, io, 4, 1), "c2p of another type refused");
    io[1].desc.type = DataType::kHALF;
    io[3].desc.type = DataType::kINT64;
    expect(!build->supportsFormatCombination(3, io, 4, 1), "INT64 table refused");
    io[3].desc.type = DataType::kINT32;
    io[0].desc.format = TensorFormat::kCHW32;
    expect(!build->supportsFormatCombination(0, io, 4, 1), "non-linear format refused");
    io[0].desc.format = TensorFormat::kLINEAR;

    // ---- shapes ----
    NullExprBuilder exprBuilder;
    DimsExprs inExprs[4]{};
    inExprs[0].nbDims = 4;
    DimsExprs outExprs[1]{};
    expect(build->getOutputShapes(inExprs, 4, nullptr, 0, outExprs, 1, exprBuilder) == 0 && outExprs[0].nbDims == 4,
        "output shape is c2c's");
    DynamicPluginTensorDesc in[4] = {io[0], io[1], io[2], io[3]};
    expect(build->configurePlugin(in, 4, &io[4], 1) == 0, "configurePlugin with consistent shapes");
    in[2].desc.dims = makeDims({2, 12, 65, 512});
    logger.clear();
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0 && logger.saw(ILogger::Severity::kERROR, "p2c"),
        "p2c rows != Sk refused");
    in[2] = io[2];
    in[1].desc.dims = makeDims({2, 12, 64, 511});
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0, "odd 2*span refused");
    in[1] = io[1];
    in[3] = dynDesc(makeDims({101}), DataType::kINT32, makeDims({101}));
    logger.clear();
    expect(build->configurePlugin(in, 4, &io[4], 1) != 0 && logger.saw(ILogger::Severity::kERROR, "rel_table"),
        "table shorter than 2*S - 1 refused at build time");
    in[3] = io[3];
    in[0].desc.dims = makeDims({-1, 12, -1, -1});
    in[1].desc.dims = makeDims({-1, 12, -1, 512});
    in[2].desc.dims = makeDims({-1, 12, -1, 512});
    expect(build->configurePlugin(in, 4, &io[4], 1) == 0, "dynamic dims accepted");
    expect(build->getWorkspaceSize(in, 4, &io[4], 1) == 0, "no workspace");
    expect(build->getTimingCacheID() != nullptr && build->getMetadataString() != nullptr, "timing cache id, metadata");

    PluginTensorDesc rt[4] = {desc(c2cDims, DataType::kHALF), desc(posDims, DataType::kHALF),
        desc(posDims, DataType::kHALF), desc(tableDims, DataType::kINT32)};
    PluginTensorDesc rtOut = desc(c2cDims, DataType::kHALF);
    expect(runtime->onShapeChange(rt, 4, &rtOut, 1) == 0, "onShapeChange with consistent shapes");
    rt[3].dims = makeDims({63});
    expect(runtime->onShapeChange(rt, 4, &rtOut, 1) != 0, "onShapeChange: table too short refused");
    rt[3].dims = tableDims;

    // enqueue without a launch: an empty batch is a no-op success, a bad rank a logged failure.
    PluginTensorDesc empty[4] = {desc(makeDims({0, 12, 64, 64}), DataType::kHALF),
        desc(makeDims({0, 12, 64, 512}), DataType::kHALF), desc(makeDims({0, 12, 64, 512}), DataType::kHALF),
        desc(tableDims, DataType::kINT32)};
    PluginTensorDesc emptyOut = empty[0];
    void const* inputs[4] = {nullptr, nullptr, nullptr, nullptr};
    void* outputs[1] = {nullptr};
    expect(runtime->enqueue(empty, &emptyOut, inputs, outputs, nullptr, nullptr) == 0, "enqueue of an empty batch");
    PluginTensorDesc rank1[4] = {desc(makeDims({8}), DataType::kHALF), rt[1], rt[2], rt[3]};
    logger.clear();
    expect(runtime->enqueue(rank1, &emptyOut, inputs, outputs, nullptr, nullptr) != 0
            && logger.saw(ILogger::Severity::kERROR, "rank"),
        "enqueue with a rank-1 c2c is a logged failure");

    // ---- serialization round trip, clone, attach ----
    PluginFieldCollection const* serial = runtime->getFieldsToSerialize();
    expect(serial != nullptr && serial->nbFields == 5, "getFieldsToSerialize gives 5 fields");
    IPluginV3* restored = creator->createPlugin("layer0", serial, TensorRTPhase::kRUNTIME);
    expect(restored != nullptr, "createPlugin from serialized fields");
    if (restored != nullptr)
    {
        auto* restoredBuild
            = static_cast<IPluginV3OneBuild*>(restored->getCapabilityInterface(PluginCapabilityType::kBUILD));
        expect(std::string{restoredBuild->getMetadataString()} == build->getMetadataString(),
            "serialized fields restore the same plugin");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    IPluginV3* attached = runtime->attachToContext(nullptr);
    expect(cloned != nullptr && attached != nullptr, "clone and attachToContext");
    delete cloned;
    delete attached;

    // c2p only: 3 inputs.
    Fields c2pOnly;
    c2pOnly.hasP2c = 0;
    IPluginV3* single = creator->createPlugin("layer1", c2pOnly.collection(), TensorRTPhase::kBUILD);
    expect(single != nullptr, "c2p-only plugin");
    if (single != nullptr)
    {
        auto* singleBuild = static_cast<IPluginV3OneBuild*>(single->getCapabilityInterface(PluginCapabilityType::kBUILD));
        DataType const three[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
        expect(singleBuild->getOutputDataTypes(&outType, 1, three, 3) == 0 && outType == DataType::kFLOAT,
            "c2p-only plugin takes 3 inputs");
        delete single;
    }
    delete plugin;

    setLoggerFinder(nullptr);
    std::printf("%s: %d checks, %d failed\n", gFailures == 0 ? "PASS" : "FAIL", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}

int runStatic(char const* path, char const* stubPath)
{
    void* stub = dlopen(stubPath, RTLD_NOW | RTLD_GLOBAL);
    if (stub == nullptr)
    {
        std::printf("cannot load %s: %s\n", stubPath, dlerror());
        return 2;
    }
    using Count = int32_t (*)();
    using Entry = int32_t (*)(int32_t, char const**, char const**, char const**, char const**);
    auto count = reinterpret_cast<Count>(dlsym(stub, "debertrt_stub_registration_count"));
    auto entry = reinterpret_cast<Entry>(dlsym(stub, "debertrt_stub_registration"));
    if (count == nullptr || entry == nullptr)
    {
        std::printf("%s is not the debertrt nvinfer stub\n", stubPath);
        return 2;
    }
    expect(count() == 0, "nothing registered before loading");
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("cannot load %s: %s\n", path, dlerror());
        return 2;
    }
    expect(count() == 1, "loading the static flavor registered one creator");
    char const* name = nullptr;
    char const* version = nullptr;
    char const* ns = nullptr;
    char const* creatorNs = nullptr;
    if (count() == 1 && entry(0, &name, &version, &ns, &creatorNs) == 0)
    {
        std::printf("registered %s::%s version %s (creator namespace %s)\n", ns, name, version, creatorNs);
        expect(std::strcmp(name, "DisentangledAttention") == 0 && std::strcmp(version, "1") == 0
                && std::strcmp(ns, "debertrt") == 0 && std::strcmp(creatorNs, "debertrt") == 0,
            "registered as debertrt::DisentangledAttention version 1");
    }
    expect(dlsym(lib, "getCreators") == nullptr, "the static flavor does not also export getCreators");
    std::printf("%s: %d checks, %d failed\n", gFailures == 0 ? "PASS" : "FAIL", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 2)
    {
        return runDynamic(argv[1]);
    }
    if (argc == 4 && std::strcmp(argv[1], "--static") == 0)
    {
        return runStatic(argv[2], argv[3]);
    }
    std::printf("usage: %s <libdebertrt_plugins.so> | --static <libdebertrt_plugins_static.so> <stub libnvinfer.so>\n",
        argv[0]);
    return 2;
}
