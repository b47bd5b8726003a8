// debertrt_run: run a debertrt engine from C++ and print its outputs.
//
//   debertrt_run ENGINE.plan TOKENS.txt [--plugin libdebertrt_plugins.so]
//
// TOKENS.txt holds one sequence of token ids per line (whitespace separated; blank lines
// and lines starting with '#' are skipped). The sequences form one batch, padded at the
// end with id 0; attention_mask is 1 on real tokens, token_type_ids (if the engine has it)
// is 0. Every output is printed one row (its last dimension) per line.
//
// The plugin library is loaded through IPluginRegistry::loadLibrary before the engine is
// deserialized, and the creators of debertrt's plugin ops are looked up: a library with none of
// them is refused, and an engine that fails to deserialize names the ones the library lacks. Shapes outside the engine's optimization profile are
// refused before any device work. Works with TensorRT 10.x and 11.x.

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

// plugins/spec.py: OPS (op types), PLUGIN_VERSION, PLUGIN_NAMESPACE
constexpr char const* kPluginNames[] = {"DisentangledAttention", "DisentangledFlashAttention"};
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "debertrt";

class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << (severity <= Severity::kERROR ? "[TensorRT error] " : "[TensorRT warning] ") << msg << "\n";
        }
    }
};

void check(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
    }
}

struct CudaFree
{
    void operator()(void* p) const noexcept
    {
        cudaFree(p);
    }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

DeviceBuffer deviceAlloc(size_t bytes)
{
    void* p = nullptr;
    check(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
    return DeviceBuffer(p);
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
    {
        throw std::runtime_error("cannot open " + path);
    }
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::vector<int64_t>> readTokens(std::string const& path)
{
    std::ifstream in(path);
    if (!in)
    {
        throw std::runtime_error("cannot open token file " + path);
    }
    std::vector<std::vector<int64_t>> rows;
    std::string line;
    int lineNumber = 0;
    while (std::getline(in, line))
    {
        ++lineNumber;
        if (line.find_first_not_of(" \t\r") == std::string::npos || line[line.find_first_not_of(" \t\r")] == '#')
        {
            continue;
        }
        std::istringstream fields(line);
        std::vector<int64_t> row;
        std::string field;
        while (fields >> field)
        {
            size_t used = 0;
            long long value = 0;
            try
            {
                value = std::stoll(field, &used);
            }
            catch (std::exception const&)
            {
                used = 0;
            }
            if (used != field.size() || value < 0)
            {
                throw std::runtime_error(path + ":" + std::to_string(lineNumber) + ": '" + field
                    + "' is not a token id (a non-negative integer)");
            }
            row.push_back(static_cast<int64_t>(value));
        }
        rows.push_back(std::move(row));
    }
    if (rows.empty())
    {
        throw std::runtime_error(path + " holds no token ids: write one sequence per line");
    }
    return rows;
}

size_t elementSize(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kUINT8:
    case nvinfer1::DataType::kBOOL: return 1;
    default: throw std::runtime_error("unsupported tensor data type");
    }
}

float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    uint32_t bits = 0;
    if (exponent == 0x1F)
    {
        bits = sign | 0x7F800000u | (mantissa << 13);
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    else if (mantissa != 0)
    {
        exponent = 113;
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
    else
    {
        bits = sign;
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

float toFloat(nvinfer1::DataType type, unsigned char const* p)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT:
    {
        float f;
        std::memcpy(&f, p, 4);
        return f;
    }
    case nvinfer1::DataType::kHALF:
    {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return halfToFloat(h);
    }
    case nvinfer1::DataType::kBF16:
    {
        uint16_t h;
        std::memcpy(&h, p, 2);
        uint32_t const bits = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    case nvinfer1::DataType::kINT32:
    {
        int32_t i;
        std::memcpy(&i, p, 4);
        return static_cast<float>(i);
    }
    case nvinfer1::DataType::kINT64:
    {
        int64_t i;
        std::memcpy(&i, p, 8);
        return static_cast<float>(i);
    }
    default: return static_cast<float>(*p);
    }
}

int64_t volume(nvinfer1::Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

std::string shapeText(nvinfer1::Dims const& d)
{
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

// Input values for one [batch, sequence] input, by name, in the engine's integer type.
std::vector<unsigned char> inputValues(std::string const& name, nvinfer1::DataType type,
    std::vector<std::vector<int64_t>> const& rows, int64_t sequence)
{
    size_t const size = elementSize(type);
    if (type != nvinfer1::DataType::kINT64 && type != nvinfer1::DataType::kINT32)
    {
        throw std::runtime_error("input " + name + " is not an integer tensor");
    }
    std::vector<unsigned char> out(rows.size() * static_cast<size_t>(sequence) * size, 0);
    for (size_t b = 0; b < rows.size(); ++b)
    {
        for (int64_t s = 0; s < sequence; ++s)
        {
            bool const real = s < static_cast<int64_t>(rows[b].size());
            int64_t value = 0;
            if (name == "input_ids")
            {
                value = real ? rows[b][static_cast<size_t>(s)] : 0;
            }
            else if (name == "attention_mask")
            {
                value = real ? 1 : 0;
            }
            else if (name != "token_type_ids")
            {
                throw std::runtime_error("unexpected engine input " + name);
            }
            unsigned char* dst = out.data() + (b * static_cast<size_t>(sequence) + static_cast<size_t>(s)) * size;
            if (size == 8)
            {
                std::memcpy(dst, &value, 8);
            }
            else
            {
                int32_t const narrow = static_cast<int32_t>(value);
                std::memcpy(dst, &narrow, 4);
            }
        }
    }
    return out;
}

int run(std::string const& planPath, std::string const& tokenPath, std::string const& pluginPath)
{
    auto const rows = readTokens(tokenPath);
    int64_t sequence = 0;
    for (auto const& row : rows)
    {
        sequence = std::max<int64_t>(sequence, static_cast<int64_t>(row.size()));
    }
    int64_t const batch = static_cast<int64_t>(rows.size());

    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime)
    {
        throw std::runtime_error("cannot create the TensorRT runtime");
    }
    nvinfer1::IPluginRegistry& registry = runtime->getPluginRegistry();
    if (!pluginPath.empty())
    {
        if (registry.loadLibrary(pluginPath.c_str()) == nullptr)
        {
            throw std::runtime_error("cannot load plugin library " + pluginPath);
        }
    }
    // A library built without triton holds the gather op only: name what is missing, so that an engine
    // using it fails to deserialize with the reason rather than a bare TensorRT error.
    std::string missing;
    size_t found = 0;
    for (char const* name : kPluginNames)
    {
        if (registry.getCreator(name, kPluginVersion, kPluginNamespace) != nullptr)
        {
            ++found;
        }
        else
        {
            missing += std::string{missing.empty() ? "" : ", "} + name;
        }
    }
    if (!pluginPath.empty() && found == 0)
    {
        throw std::runtime_error(pluginPath + " provides no debertrt plugin (version " + kPluginVersion
            + ", namespace " + kPluginNamespace + "): rebuild the plugin library");
    }

    auto const plan = readFile(planPath);
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
    if (!engine)
    {
        throw std::runtime_error("cannot deserialize " + planPath
            + " (corrupt, built by another TensorRT version, or a plugin it uses is not loaded: "
            + (pluginPath.empty() ? std::string{"no --plugin"} : "missing from " + pluginPath + ": " + missing) + ")");
    }

    // Refuse shapes outside profile 0 before touching the device.
    std::vector<std::string> inputs, outputs;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).emplace_back(name);
    }
    for (auto const& name : inputs)
    {
        nvinfer1::Dims const lo = engine->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
        nvinfer1::Dims const hi = engine->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
        if (lo.nbDims != 2 || batch < lo.d[0] || batch > hi.d[0] || sequence < lo.d[1] || sequence > hi.d[1])
        {
            throw std::runtime_error("batch " + std::to_string(batch) + " x sequence " + std::to_string(sequence)
                + " is outside the engine's profile for " + name + ": min " + shapeText(lo) + ", max "
                + shapeText(hi));
        }
    }

    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context)
    {
        throw std::runtime_error("cannot create an execution context");
    }
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::vector<DeviceBuffer> buffers;
    for (auto const& name : inputs)
    {
        nvinfer1::DataType const type = engine->getTensorDataType(name.c_str());
        auto const host = inputValues(name, type, rows, sequence);
        buffers.push_back(deviceAlloc(host.size()));
        check(cudaMemcpyAsync(buffers.back().get(), host.data(), host.size(), cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync");
        nvinfer1::Dims dims{};
        dims.nbDims = 2;
        dims.d[0] = batch;
        dims.d[1] = sequence;
        if (!context->setInputShape(name.c_str(), dims) || !context->setTensorAddress(name.c_str(), buffers.back().get()))
        {
            throw std::runtime_error("TensorRT refused input " + name);
        }
    }
    std::vector<std::vector<unsigned char>> results;
    std::vector<nvinfer1::Dims> shapes;
    for (auto const& name : outputs)
    {
        nvinfer1::Dims const dims = context->getTensorShape(name.c_str());
        if (volume(dims) < 0)
        {
            throw std::runtime_error("output " + name + " has an unresolved shape " + shapeText(dims));
        }
        size_t const bytes = static_cast<size_t>(volume(dims)) * elementSize(engine->getTensorDataType(name.c_str()));
        buffers.push_back(deviceAlloc(bytes));
        results.emplace_back(bytes);
        shapes.push_back(dims);
        context->setTensorAddress(name.c_str(), buffers.back().get());
    }
    if (!context->enqueueV3(stream))
    {
        throw std::runtime_error("enqueueV3 failed");
    }
    for (size_t o = 0; o < outputs.size(); ++o)
    {
        check(cudaMemcpyAsync(results[o].data(), buffers[inputs.size() + o].get(), results[o].size(),
                  cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync");
    }
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cudaStreamDestroy(stream);

    for (size_t o = 0; o < outputs.size(); ++o)
    {
        nvinfer1::DataType const type = engine->getTensorDataType(outputs[o].c_str());
        size_t const size = elementSize(type);
        int64_t const last = shapes[o].nbDims > 0 ? shapes[o].d[shapes[o].nbDims - 1] : 1;
        int64_t const count = volume(shapes[o]);
        std::printf("%s %s\n", outputs[o].c_str(), shapeText(shapes[o]).c_str());
        for (int64_t i = 0; i < count; ++i)
        {
            std::printf("%s%.6g", i % last == 0 ? "" : " ", static_cast<double>(toFloat(type, results[o].data() + static_cast<size_t>(i) * size)));
            if ((i + 1) % last == 0)
            {
                std::printf("\n");
            }
        }
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    std::string plan, tokens, plugin;
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        if (arg == "--plugin" && i + 1 < argc)
        {
            plugin = argv[++i];
        }
        else if (arg == "-h" || arg == "--help")
        {
            std::printf("usage: %s ENGINE.plan TOKENS.txt [--plugin libdebertrt_plugins.so]\n", argv[0]);
            return 0;
        }
        else if (plan.empty())
        {
            plan = arg;
        }
        else if (tokens.empty())
        {
            tokens = arg;
        }
        else
        {
            std::fprintf(stderr, "debertrt_run: unexpected argument '%s' (see --help)\n", arg.c_str());
            return 2;
        }
    }
    if (plan.empty() || tokens.empty())
    {
        std::fprintf(stderr, "usage: %s ENGINE.plan TOKENS.txt [--plugin libdebertrt_plugins.so]\n", argv[0]);
        return 2;
    }
    try
    {
        return run(plan, tokens, plugin);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "debertrt_run: error: %s\n", e.what());
        return 1;
    }
}
