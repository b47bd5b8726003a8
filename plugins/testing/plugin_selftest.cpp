/*
 * Host-only check of debertrt's TensorRT plugin library, with no TensorRT library and no GPU: it
 * loads libdebertrt_plugins.so the way IPluginRegistry::loadLibrary does (dlopen, setLoggerFinder,
 * getCreators) and drives every creator and plugin by hand (no kernel launch), checking results and
 * logged errors. What it prints is compared with plugins/spec.py by tests/test_plugin_kernel_build.py.
 *
 *   debertrt_plugin_selftest <libdebertrt_plugins.so> [--probe OP name=value,... ]...
 *       per creator:  "creator <name> <version> <namespace>", "field <op> <name> <int32|float32>",
 *                     "dtypes <op> <float I/O types supportsFormatCombination accepts>"
 *       per probe:    "probe <op> <fields> accepted|refused" (createPlugin with exactly those fields)
 *       then FAIL lines for failed checks and "PASS|FAIL: N checks, M failed"
 *   debertrt_plugin_selftest --static <libdebertrt_plugins_static.so> <stub libnvinfer.so>
 *       loads the stub registry (nvinfer_stub.cpp), then the static flavor, and prints
 *       "registered <namespace>::<name> version <v> (creator namespace <ns>)" per registration
 *
 * Exit: 0 all passed, 1 a check failed, 2 usage or load error.
 */
#include "selftest.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <memory>

using namespace nvinfer1;

namespace selftest
{
namespace
{

int gFailures = 0;
int gChecks = 0;

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

class ConstantExpr final : public IDimensionExpr
{
public:
    class Impl final : public apiv::VDimensionExpr
    {
    public:
        explicit Impl(int64_t value)
            : mValue(value)
        {
        }
        bool isConstant() const override
        {
            return true;
        }
        int64_t getConstantValue() const override
        {
            return mValue;
        }
        bool isSizeTensor() const override
        {
            return false;
        }

    private:
        int64_t mValue;
    };

    explicit ConstantExpr(int64_t value)
        : mOwned(value)
    {
        mImpl = &mOwned;
    }
    ~ConstantExpr() noexcept override = default;

private:
    Impl mOwned;
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

//! Checks every op shares: identity, field errors, capabilities, serialization round trip, clone.
void checkCommon(IPluginCreatorV3One& creator, OpChecks const& op, RecordingLogger& logger)
{
    std::string const name = op.name;
    FieldSet valid(creator, parseAssignments(op.validFields));
    IPluginV3* plugin = creator.createPlugin("layer0", valid.collection(), TensorRTPhase::kBUILD);
    expect(plugin != nullptr, name + ": createPlugin with valid fields");
    if (plugin == nullptr)
    {
        return;
    }
    logger.clear();
    expect(creator.createPlugin("layer0", nullptr, TensorRTPhase::kBUILD) == nullptr
            && logger.saw(ILogger::Severity::kERROR, "no field collection"),
        name + ": null field collection is a logged error");
    FieldSet wrongType(creator, parseAssignments(op.validFields));
    PluginFieldCollection const* names = creator.getFieldNames();
    for (int32_t k = 0; k < names->nbFields; ++k)
    {
        if (names->fields[k].type == PluginFieldType::kINT32)
        {
            wrongType.find(names->fields[k].name)->type = PluginFieldType::kFLOAT32; // an int field given as a float
            logger.clear();
            IPluginV3* bad = creator.createPlugin("layer0", wrongType.collection(), TensorRTPhase::kBUILD);
            expect(bad == nullptr && logger.saw(ILogger::Severity::kERROR, names->fields[k].name),
                name + ": int field " + names->fields[k].name + " given as a float is a logged error");
            delete bad;
            break;
        }
    }

    Capabilities c = capabilities(plugin);
    expect(c.core != nullptr && c.build != nullptr && c.runtime != nullptr, name + ": all three capabilities");
    if (c.core == nullptr || c.build == nullptr || c.runtime == nullptr)
    {
        delete plugin;
        return;
    }
    expect(std::strcmp(c.core->getPluginName(), creator.getPluginName()) == 0
            && std::strcmp(c.core->getPluginVersion(), creator.getPluginVersion()) == 0
            && std::strcmp(c.core->getPluginNamespace(), creator.getPluginNamespace()) == 0,
        name + ": plugin and creator identity agree");
    expect(std::strcmp(c.core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0
            && std::strcmp(c.build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
            && std::strcmp(c.runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0,
        name + ": capability interfaces report their kinds");
    expect(c.build->getNbOutputs() == 1, name + ": one output");
    expect(c.build->getTimingCacheID() != nullptr && c.build->getMetadataString() != nullptr,
        name + ": timing cache id and metadata");

    PluginFieldCollection const* serial = c.runtime->getFieldsToSerialize();
    expect(serial != nullptr && serial->nbFields == names->nbFields,
        name + ": getFieldsToSerialize gives every field");
    IPluginV3* restored = creator.createPlugin("layer0", serial, TensorRTPhase::kRUNTIME);
    expect(restored != nullptr, name + ": createPlugin from serialized fields");
    if (restored != nullptr)
    {
        expect(std::string{capabilities(restored).build->getMetadataString()} == c.build->getMetadataString(),
            name + ": serialized fields restore the same plugin");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    IPluginV3* attached = c.runtime->attachToContext(nullptr);
    expect(cloned != nullptr && attached != nullptr
            && std::string{capabilities(cloned).build->getMetadataString()} == c.build->getMetadataString(),
        name + ": clone and attachToContext");
    delete cloned;
    delete attached;
    delete plugin;
}

int runDynamic(char const* path, std::multimap<std::string, std::string> const& probes)
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
    expect(nbCreators >= 1 && creators != nullptr, "getCreators returns creators");
    for (int32_t i = 0; creators != nullptr && i < nbCreators; ++i)
    {
        expect(creators[i] != nullptr && std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "creator " + std::to_string(i) + " is an IPluginCreatorV3One");
        if (gFailures != 0)
        {
            return 1;
        }
        auto& creator = *static_cast<IPluginCreatorV3One*>(creators[i]);
        std::string const name = creator.getPluginName();
        std::printf("creator %s %s %s\n", name.c_str(), creator.getPluginVersion(), creator.getPluginNamespace());
        PluginFieldCollection const* names = creator.getFieldNames();
        for (int32_t k = 0; names != nullptr && k < names->nbFields; ++k)
        {
            std::printf("field %s %s %s\n", name.c_str(), names->fields[k].name, fieldTypeName(names->fields[k].type));
        }
        auto range = probes.equal_range(name);
        for (auto it = range.first; it != range.second; ++it)
        {
            FieldSet fields(creator, parseAssignments(it->second));
            IPluginV3* plugin = creator.createPlugin("probe", fields.collection(), TensorRTPhase::kBUILD);
            std::printf("probe %s %s %s\n", name.c_str(), it->second.c_str(), plugin != nullptr ? "accepted" : "refused");
            delete plugin;
        }
        OpChecks const* op = nullptr;
        for (OpChecks const* known : {&kGatherChecks, &kFlashChecks})
        {
            op = name == known->name ? known : op;
        }
        expect(op != nullptr, "the self-test knows creator " + name);
        if (op != nullptr)
        {
            checkCommon(creator, *op, logger);
            op->check(creator, logger);
        }
    }
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
    expect(count() >= 1, "loading the static flavor registered creators");
    for (int32_t k = 0; k < count(); ++k)
    {
        char const* name = nullptr;
        char const* version = nullptr;
        char const* ns = nullptr;
        char const* creatorNs = nullptr;
        if (entry(k, &name, &version, &ns, &creatorNs) == 0)
        {
            std::printf("registered %s::%s version %s (creator namespace %s)\n", ns, name, version, creatorNs);
        }
    }
    expect(dlsym(lib, "getCreators") == nullptr, "the static flavor does not also export getCreators");
    std::printf("%s: %d checks, %d failed\n", gFailures == 0 ? "PASS" : "FAIL", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}

} // namespace

// ---- shared pieces (selftest.h) ----------------------------------------------------------
void expect(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

int failures()
{
    return gFailures;
}

int checks()
{
    return gChecks;
}

void RecordingLogger::log(Severity severity, AsciiChar const* msg) noexcept
{
    messages.emplace_back(static_cast<int32_t>(severity), msg != nullptr ? msg : "");
}

bool RecordingLogger::saw(Severity severity, char const* text) const
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

void RecordingLogger::clear()
{
    messages.clear();
}

Assignments parseAssignments(std::string const& text)
{
    Assignments out;
    size_t start = 0;
    while (start < text.size())
    {
        size_t end = text.find(',', start);
        end = end == std::string::npos ? text.size() : end;
        std::string const item = text.substr(start, end - start);
        size_t const eq = item.find('=');
        if (eq != std::string::npos)
        {
            out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
        }
        start = end + 1;
    }
    return out;
}

FieldSet::FieldSet(IPluginCreatorV3One& creator, Assignments const& values)
{
    PluginFieldCollection const* names = creator.getFieldNames();
    for (auto const& [name, text] : values)
    {
        PluginFieldType type = PluginFieldType::kINT32;
        for (int32_t k = 0; names != nullptr && k < names->nbFields; ++k)
        {
            type = name == names->fields[k].name ? names->fields[k].type : type;
        }
        mNames.push_back(name);
        if (type == PluginFieldType::kFLOAT32)
        {
            mFloats.push_back(std::strtof(text.c_str(), nullptr));
            mFields.emplace_back(nullptr, &mFloats.back(), type, 1);
        }
        else
        {
            mInts.push_back(static_cast<int32_t>(std::strtol(text.c_str(), nullptr, 10)));
            mFields.emplace_back(nullptr, &mInts.back(), PluginFieldType::kINT32, 1);
        }
    }
    mFields.emplace_back("plugin_namespace", "debertrt", PluginFieldType::kCHAR, 8);
    for (size_t k = 0; k < mNames.size(); ++k)
    {
        mFields[k].name = mNames[k].c_str();
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

PluginField* FieldSet::find(char const* name)
{
    for (auto& field : mFields)
    {
        if (std::strcmp(field.name, name) == 0)
        {
            return &field;
        }
    }
    return nullptr;
}

Capabilities capabilities(IPluginV3* plugin)
{
    Capabilities c;
    if (plugin != nullptr)
    {
        c.core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
        c.build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
        c.runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    }
    return c;
}

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

DynamicPluginTensorDesc dynDesc(Dims const& dims, DataType type)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims = dims;
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.min = dims;
    d.opt = dims;
    d.max = dims;
    return d;
}

PluginTensorDesc desc(Dims const& dims, DataType type)
{
    PluginTensorDesc d{};
    d.dims = dims;
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    return d;
}

class ConstantExprBuilder::Impl final : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return &mExprs.emplace_back(value);
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) override
    {
        int64_t const a = first.getConstantValue();
        int64_t const b = second.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return constant(a + b);
        case DimensionOperation::kPROD: return constant(a * b);
        case DimensionOperation::kMAX: return constant(a > b ? a : b);
        case DimensionOperation::kMIN: return constant(a < b ? a : b);
        case DimensionOperation::kSUB: return constant(a - b);
        default: return nullptr; // not needed by our plugins
        }
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }

private:
    std::deque<ConstantExpr> mExprs; // stable addresses
};

ConstantExprBuilder::ConstantExprBuilder()
    : mOwned(std::make_unique<Impl>())
{
    mImpl = mOwned.get();
}

ConstantExprBuilder::~ConstantExprBuilder() noexcept = default;

DimsExprs ConstantExprBuilder::dims(std::initializer_list<int64_t> values)
{
    DimsExprs e{};
    e.nbDims = static_cast<int32_t>(values.size());
    int32_t k = 0;
    for (int64_t v : values)
    {
        e.d[k++] = mOwned->constant(v);
    }
    return e;
}

} // namespace selftest

int main(int argc, char** argv)
{
    if (argc == 4 && std::strcmp(argv[1], "--static") == 0)
    {
        return selftest::runStatic(argv[2], argv[3]);
    }
    std::multimap<std::string, std::string> probes;
    int i = 2;
    while (i + 2 < argc && std::strcmp(argv[i], "--probe") == 0)
    {
        probes.emplace(argv[i + 1], argv[i + 2]);
        i += 3;
    }
    if (argc < 2 || i != argc || std::strncmp(argv[1], "--", 2) == 0)
    {
        std::printf("usage: %s <libdebertrt_plugins.so> [--probe OP name=value,...]... | --static "
                    "<libdebertrt_plugins_static.so> <stub libnvinfer.so>\n",
            argv[0]);
        return 2;
    }
    return selftest::runDynamic(argv[1], probes);
}
