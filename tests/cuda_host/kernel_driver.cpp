// Runs DisentangledAttention cases through the kernel's C entry point on cuda_host.
//
//   kernel_driver CASE_DIR
//
// CASE_DIR/cases.txt has one case per line:
//   name dtype rows sq sk span table_len pos_scale has_c2p has_p2c in_place
// (dtype as DEBERTRT_DTYPE_*, pos_scale in any strtof form, e.g. C99 hex). Inputs are raw
// little-endian files CASE_DIR/name.{c2c,c2p,p2c,table}; the output goes to CASE_DIR/name.out.
// Every tensor gets a heap block of exactly its size; out starts as all-ones bytes (NaN in
// every dtype, so an output the kernel does not write shows) unless it is c2c (in place).
// (C stdio rather than iostreams: this file is compiled twice per test session.)
#include "disentangled_attention_kernel.cuh"

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace
{

//! A heap block of exactly `size` bytes: ASan's redzone starts right after the last element.
struct Buffer
{
    std::unique_ptr<unsigned char[]> bytes;
    std::size_t size{0};

    unsigned char* data() const
    {
        return bytes.get();
    }
};

[[noreturn]] void fail(char const* what, char const* path)
{
    std::fprintf(stderr, "%s: %s\n", what, path);
    std::exit(2);
}

Buffer readFile(char const* path, std::size_t expectedBytes)
{
    std::FILE* file = std::fopen(path, "rb");
    if (file == nullptr)
    {
        fail("cannot open", path);
    }
    Buffer buffer{std::make_unique<unsigned char[]>(expectedBytes), expectedBytes};
    std::size_t const got = std::fread(buffer.data(), 1, expectedBytes, file);
    bool const atEnd = std::fgetc(file) == EOF;
    std::fclose(file);
    if (got != expectedBytes || !atEnd)
    {
        fail("not the size the case line gives", path);
    }
    return buffer;
}

int runCase(char const* dir, char const* line)
{
    char name[200];
    char scale[64];
    int dtype = 0;
    int64_t rows = 0;
    int sq = 0;
    int sk = 0;
    int span = 0;
    int tableLen = 0;
    int hasC2p = 0;
    int hasP2c = 0;
    int inPlace = 0;
    if (std::sscanf(line, "%199s %d %" SCNd64 " %d %d %d %d %63s %d %d %d", name, &dtype, &rows, &sq, &sk, &span,
            &tableLen, scale, &hasC2p, &hasP2c, &inPlace)
        != 11)
    {
        fail("malformed case line", line);
    }
    std::size_t const element = dtype == DEBERTRT_DTYPE_FLOAT32 ? 4 : 2;
    std::size_t const width = 2 * static_cast<std::size_t>(span);
    char path[4096];
    auto const file = [&](char const* suffix) {
        std::snprintf(path, sizeof(path), "%s/%s.%s", dir, name, suffix);
        return path;
    };
    Buffer const c2c = readFile(file("c2c"), rows * sq * sk * element);
    Buffer const c2p = hasC2p ? readFile(file("c2p"), rows * sq * width * element) : Buffer{};
    Buffer const p2c = hasP2c ? readFile(file("p2c"), rows * sk * width * element) : Buffer{};
    Buffer const table = readFile(file("table"), tableLen * sizeof(int32_t));
    Buffer out = inPlace ? Buffer{} : Buffer{std::make_unique<unsigned char[]>(c2c.size), c2c.size};
    Buffer const& result = inPlace ? c2c : out;
    if (!inPlace)
    {
        std::memset(out.data(), 0xff, out.size);
    }

    std::printf("case %s\n", name); // names the case a sanitizer report belongs to
    std::fflush(stdout);
    int const status = debertrt_disentangled_attention(dtype, c2c.data(), hasC2p ? c2p.data() : nullptr,
        hasP2c ? p2c.data() : nullptr, reinterpret_cast<int32_t const*>(table.data()), tableLen, result.data(), rows, sq,
        sk, span, std::strtof(scale, nullptr), nullptr);
    if (status != 0)
    {
        std::fprintf(stderr, "%s: launch returned %d (%s)\n", name, status, debertrt_error_string(status));
        return 1;
    }
    std::FILE* output = std::fopen(file("out"), "wb");
    bool const written = output != nullptr && std::fwrite(result.data(), 1, result.size, output) == result.size;
    if (output == nullptr || std::fclose(output) != 0 || !written)
    {
        fail("cannot write", path);
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s CASE_DIR\n", argv[0]);
        return 2;
    }
    char path[4096];
    std::snprintf(path, sizeof(path), "%s/cases.txt", argv[1]);
    std::FILE* cases = std::fopen(path, "r");
    if (cases == nullptr)
    {
        fail("cannot open", path);
    }
    int count = 0;
    char line[1024];
    while (std::fgets(line, sizeof(line), cases) != nullptr)
    {
        if (line[0] == '\n')
        {
            continue;
        }
        if (int const status = runCase(argv[1], line))
        {
            return status;
        }
        ++count;
    }
    std::fclose(cases);
    std::printf("ran %d cases\n", count);
    return 0;
}
