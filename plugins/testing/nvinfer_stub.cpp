/*
 * A stand-in for libnvinfer's getPluginRegistry(), for tests on machines without
 * TensorRT: it records registerCreator() calls so a test can check that loading
 * libdebertrt_plugins_static.so registers our creator, and under which namespace.
 * Build: g++ -std=c++17 -shared -fPIC -Wno-deprecated-declarations -isystem <TensorRT include>
 *        -isystem <CUDA include> nvinfer_stub.cpp -o libnvinfer.so
 * (-isystem: TensorRT's own headers trip -Wdeprecated-declarations otherwise; the stub itself
 * must name the deprecated IPluginCreator to implement TensorRT 10's registry.)
 * Not part of any shipped library.
 */
#include <NvInferRuntime.h>

#include <cstring>
#include <string>
#include <vector>

namespace
{

struct Registration
{
    std::string name;
    std::string version;
    std::string argNamespace;
    std::string creatorNamespace;
};

class RecordingRegistry final : public nvinfer1::IPluginRegistry
{
public:
    std::vector<Registration> registrations;

    void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(nvinfer1::AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, nvinfer1::AsciiChar const* const ns) noexcept override
    {
        if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            return false;
        }
        auto& v3 = static_cast<nvinfer1::IPluginCreatorV3One&>(creator);
        registrations.push_back({v3.getPluginName(), v3.getPluginVersion(), ns != nullptr ? ns : "",
            v3.getPluginNamespace()});
        return true;
    }
    nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreatorInterface* getCreator(
        nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    nvinfer1::IPluginResource* acquirePluginResource(nvinfer1::AsciiChar const*, nvinfer1::IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(nvinfer1::AsciiChar const*) noexcept override
    {
        return 0;
    }
    // Pure virtual in some TensorRT versions only (added in 10.x / removed in 11): no `override`,
    // so the stub compiles against both; where the base lacks them they are plain members.
    nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept
    {
        *numCreators = 0;
        return nullptr;
    }
    bool registerCreator(nvinfer1::IPluginCreator&, nvinfer1::AsciiChar const* const) noexcept
    {
        return false;
    }
    nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreator* getPluginCreator(
        nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const) noexcept
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreator const&) noexcept
    {
        return false;
    }
};

RecordingRegistry& registry()
{
    static RecordingRegistry instance;
    return instance;
}

} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

extern "C" __attribute__((visibility("default"))) int32_t debertrt_stub_registration_count()
{
    return static_cast<int32_t>(registry().registrations.size());
}

extern "C" __attribute__((visibility("default"))) int32_t debertrt_stub_registration(
    int32_t index, char const** name, char const** version, char const** argNamespace, char const** creatorNamespace)
{
    if (index < 0 || index >= debertrt_stub_registration_count())
    {
        return 1;
    }
    Registration const& r = registry().registrations[static_cast<size_t>(index)];
    *name = r.name.c_str();
    *version = r.version.c_str();
    *argNamespace = r.argNamespace.c_str();
    *creatorNamespace = r.creatorNamespace.c_str();
    return 0;
}
