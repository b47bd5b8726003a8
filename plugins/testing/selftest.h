/*
 * Pieces of the host-only plugin self-test (plugin_selftest.cpp) shared by its per-op checks
 * (selftest_gather.cpp, selftest_flash.cpp). No GPU, no TensorRT library: only the headers.
 */
#ifndef DEBERTRT_SELFTEST_H
#define DEBERTRT_SELFTEST_H

#include <NvInferRuntime.h>

#include <deque>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace selftest
{

//! Count a check; print "FAIL <what>" when it fails.
void expect(bool ok, std::string const& what);
int failures();
int checks();

class RecordingLogger final : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override;
    //! Whether a message at `severity` containing `text` was logged since the last clear().
    bool saw(Severity severity, char const* text) const;
    void clear();

    std::vector<std::pair<int32_t, std::string>> messages;
};

//! "name=value" pairs, e.g. from "has_c2p=1,pos_scale=0.125".
using Assignments = std::vector<std::pair<std::string, std::string>>;
Assignments parseAssignments(std::string const& text);

//! A field collection for `creator` from assignments, each typed as getFieldNames() says (int32 or
//! float32; a name the creator does not list goes in as int32), plus the plugin_namespace string an
//! ONNX node also carries.
class FieldSet
{
public:
    FieldSet(nvinfer1::IPluginCreatorV3One& creator, Assignments const& values);
    nvinfer1::PluginFieldCollection const* collection() noexcept
    {
        return &mCollection;
    }
    //! The field's entry, to corrupt its type in a test.
    nvinfer1::PluginField* find(char const* name);

private:
    std::deque<int32_t> mInts;
    std::deque<float> mFloats;
    std::vector<std::string> mNames;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

//! A plugin's three capability interfaces (null when missing).
struct Capabilities
{
    nvinfer1::IPluginV3OneCore* core{nullptr};
    nvinfer1::IPluginV3OneBuild* build{nullptr};
    nvinfer1::IPluginV3OneRuntime* runtime{nullptr};
};
Capabilities capabilities(nvinfer1::IPluginV3* plugin);

//! The plugin `creator` makes from `fields` (build phase), its build and runtime interfaces in `c`;
//! null, after the failed check "<op>: a plugin to check", when it or one of them is missing.
inline std::unique_ptr<nvinfer1::IPluginV3> pluginToCheck(
    nvinfer1::IPluginCreatorV3One& creator, char const* fields, char const* op, Capabilities& c)
{
    FieldSet set(creator, parseAssignments(fields));
    std::unique_ptr<nvinfer1::IPluginV3> plugin(
        creator.createPlugin("layer0", set.collection(), nvinfer1::TensorRTPhase::kBUILD));
    c = capabilities(plugin.get());
    if (c.build == nullptr || c.runtime == nullptr)
    {
        expect(false, std::string{op} + ": a plugin to check");
        return nullptr;
    }
    return plugin;
}

//! Checks "<what> plugin" (`creator` makes one from `fields`) and "<what> plugin takes <n> inputs"
//! (getOutputDataTypes accepts `inputTypes`, the output typed like the first).
inline void expectTakes(nvinfer1::IPluginCreatorV3One& creator, std::string const& fields,
    std::vector<nvinfer1::DataType> const& inputTypes, std::string const& what)
{
    FieldSet set(creator, parseAssignments(fields));
    std::unique_ptr<nvinfer1::IPluginV3> plugin(
        creator.createPlugin("layer1", set.collection(), nvinfer1::TensorRTPhase::kBUILD));
    expect(plugin != nullptr, what + " plugin");
    if (plugin != nullptr)
    {
        nvinfer1::DataType out = nvinfer1::DataType::kINT64; // no plugin's output type
        int32_t const n = static_cast<int32_t>(inputTypes.size());
        expect(capabilities(plugin.get()).build->getOutputDataTypes(&out, 1, inputTypes.data(), n) == 0
                && out == inputTypes[0],
            what + " plugin takes " + std::to_string(n) + " inputs");
    }
}

nvinfer1::Dims makeDims(std::initializer_list<int64_t> values);
nvinfer1::DynamicPluginTensorDesc dynDesc(nvinfer1::Dims const& dims, nvinfer1::DataType type);
nvinfer1::PluginTensorDesc desc(nvinfer1::Dims const& dims, nvinfer1::DataType type);

//! The float I/O types a plugin accepts: each candidate type for which `combination(type)` (the plugin's
//! I/O descriptors with that float type) passes supportsFormatCombination at every position; e.g.
//! "float16 bfloat16".
template <typename Combination>
std::string acceptedTypes(nvinfer1::IPluginV3OneBuild& build, int32_t nbInputs, Combination combination)
{
    std::string names;
    std::pair<nvinfer1::DataType, char const*> const candidates[] = {{nvinfer1::DataType::kFLOAT, "float32"},
        {nvinfer1::DataType::kHALF, "float16"}, {nvinfer1::DataType::kBF16, "bfloat16"},
        {nvinfer1::DataType::kINT8, "int8"}, {nvinfer1::DataType::kFP8, "float8"}};
    for (auto const& candidate : candidates)
    {
        std::vector<nvinfer1::DynamicPluginTensorDesc> io = combination(candidate.first);
        bool ok = true;
        for (int32_t pos = 0; ok && pos < nbInputs + 1; ++pos)
        {
            ok = build.supportsFormatCombination(pos, io.data(), nbInputs, 1);
        }
        if (ok)
        {
            names += (names.empty() ? "" : " ") + std::string{candidate.second};
        }
    }
    return names;
}

//! An IExprBuilder over constants only: enough to evaluate getOutputShapes on known dims.
class ConstantExprBuilder final : public nvinfer1::IExprBuilder
{
public:
    ConstantExprBuilder();
    ~ConstantExprBuilder() noexcept override;
    //! [c0, c1, ...] as constant expressions, e.g. for a plugin input.
    nvinfer1::DimsExprs dims(std::initializer_list<int64_t> values);

private:
    class Impl;
    std::unique_ptr<Impl> mOwned;
};

//! What the self-test knows about one op: valid fields and its structural checks.
struct OpChecks
{
    char const* name;
    char const* validFields;
    void (*check)(nvinfer1::IPluginCreatorV3One& creator, RecordingLogger& logger);
};
extern OpChecks const kGatherChecks;
extern OpChecks const kFlashChecks;

} // namespace selftest

#endif // DEBERTRT_SELFTEST_H
