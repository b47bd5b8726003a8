/*
 * DisentangledAttention TensorRT plugin (IPluginV3, TensorRT 10.x and 11.x).
 *
 * Identity: name "DisentangledAttention", namespace "debertrt", version "1".
 * Fields, inputs, output and formula: plugins/spec.py and README.md beside this file.
 */
#ifndef DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
#define DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H

#include <NvInferRuntime.h>

namespace debertrt
{
namespace plugin
{

//! The op's creator (one per process), for getCreators and load-time registration.
nvinfer1::IPluginCreatorV3One& disentangledAttentionCreator() noexcept;

} // namespace plugin
} // namespace debertrt

#endif // DEBERTRT_DISENTANGLED_ATTENTION_PLUGIN_H
