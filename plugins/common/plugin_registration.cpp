/*
 * How the plugin libraries hand their creators to TensorRT, chosen when compiling this file:
 *
 *  - default (libdebertrt_plugins.so): export getCreators() and setLoggerFinder() for
 *    IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, --setPluginsToSerialize,
 *    TensorRT-RTX); no TensorRT symbol is needed at link or load time.
 *  - DEBERTRT_STATIC_REGISTRATION=1 (libdebertrt_plugins_static.so): register every creator when
 *    the library is loaded (what REGISTER_TENSORRT_PLUGIN does, but under our namespace: the macro
 *    passes ""), for ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins, Triton's TensorRT
 *    backend.
 *
 * One library never does both: loadLibrary refuses a library whose creators are already
 * registered, and static registration would register them during loadLibrary's own dlopen.
 * DEBERTRT_WITH_FLASH=1 adds the DisentangledFlashAttention creator (built where Triton could
 * compile its kernel).
 */
#include "disentangled_attention_plugin.h"
#include "plugin_base.h"
#if defined(DEBERTRT_WITH_FLASH) && DEBERTRT_WITH_FLASH
#include "disentangled_flash_attention_plugin.h"
#endif

#include <cstdint>

namespace
{

nvinfer1::IPluginCreatorInterface* const* allCreators(int32_t& nbCreators) noexcept
{
#if defined(DEBERTRT_WITH_FLASH) && DEBERTRT_WITH_FLASH
    static nvinfer1::IPluginCreatorInterface* const creators[] = {
        &debertrt::plugin::disentangledAttentionCreator(), &debertrt::plugin::disentangledFlashAttentionCreator()};
#else
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&debertrt::plugin::disentangledAttentionCreator()};
#endif
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

} // namespace

#if defined(DEBERTRT_STATIC_REGISTRATION) && DEBERTRT_STATIC_REGISTRATION

namespace
{
class StaticRegistration
{
public:
    StaticRegistration() noexcept
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        int32_t nbCreators = 0;
        nvinfer1::IPluginCreatorInterface* const* creators = allCreators(nbCreators);
        for (int32_t k = 0; k < nbCreators; ++k)
        {
            if (registry == nullptr || !registry->registerCreator(*creators[k], debertrt::plugin::kPLUGIN_NAMESPACE))
            {
                debertrt::plugin::logMessage(nvinfer1::ILogger::Severity::kWARNING, "registration",
                    "could not register a plugin creator (already registered by another library?)");
            }
        }
    }
};

StaticRegistration gStaticRegistration;
} // namespace

#else

#if defined(_WIN32)
#define DEBERTRT_PLUGIN_API __declspec(dllexport)
#else
#define DEBERTRT_PLUGIN_API __attribute__((visibility("default")))
#endif

extern "C"
{
    DEBERTRT_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
    {
        return allCreators(nbCreators);
    }

    DEBERTRT_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
    {
        debertrt::plugin::setLoggerFinder(finder);
    }
}

#endif
