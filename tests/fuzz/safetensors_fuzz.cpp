// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the safetensors reader. Each input is validated from memory (the same code
// path open() takes after mmap), every accessor is exercised on every tensor, and an accepted file
// must survive a round trip through safetensors_writer unchanged. Anything but a clean
// reparam::io_error rejection is a bug: a sanitizer report, another exception, or a mismatch.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <reparam/io/safetensors.hpp>

namespace {

using reparam::io::dtype;
using reparam::io::safetensors_file;
using reparam::io::tensor_info;

[[noreturn]] void fail(const char* what, const std::string& name) {
  std::fprintf(stderr, "safetensors_fuzz: %s (tensor '%s')\n", what, name.c_str());
  std::abort();
}

void require(bool condition, const char* what, const std::string& name) {
  if (!condition) {
    fail(what, name);
  }
}

bool is_float_type(dtype type) {
  return type == dtype::f32 || type == dtype::f16 || type == dtype::bf16 || type == dtype::f64 ||
         type == dtype::f8_e4m3 || type == dtype::f8_e5m2;
}

// Reads every byte and calls every accessor that applies; checks what the reader promises.
void touch(const safetensors_file& file, std::size_t file_size) {
  std::size_t previous_begin = 0;
  for (const tensor_info& info : file.tensors()) {
    const std::string& name = info.name;
    require(info.data_begin >= previous_begin, "tensors not sorted by data_begin", name);
    previous_begin = info.data_begin;
    require(info.data_begin <= info.data_end && info.data_end <= file_size, "offsets", name);
    require(info.size_bytes() ==
                static_cast<std::size_t>(info.numel()) * reparam::io::dtype_size(info.type),
            "size_bytes != numel * dtype_size", name);
    require(file.contains(name) && &file.info(name) == &info, "lookup", name);
    const std::byte* bytes = file.bytes(name);
    unsigned checksum = 0;
    for (std::size_t i = 0; i < info.size_bytes(); ++i) {
      checksum += std::to_integer<unsigned>(bytes[i]);
    }
    static volatile unsigned sink = 0;
    sink = sink + checksum;

    if (is_float_type(info.type)) {
      const std::vector<float> values = file.to_float(name);
      require(values.size() == static_cast<std::size_t>(info.numel()), "to_float size", name);
      const reparam::matrix<float> loaded = file.load_matrix(name);
      require(loaded.size() == info.numel(), "load_matrix size", name);
      if (info.type == dtype::f32 && reinterpret_cast<std::uintptr_t>(bytes) % 4 == 0) {
        const auto view = file.matrix_f32(name);
        require(view.rows() == loaded.rows() && view.cols() == loaded.cols(), "view shape", name);
        require(
            info.numel() == 0 || std::memcmp(view.data(), values.data(), info.size_bytes()) == 0,
            "view differs from copy", name);
      }
    } else if (info.type != dtype::boolean) {
      try {
        require(file.to_int32(name).size() == static_cast<std::size_t>(info.numel()),
                "to_int32 size", name);
      } catch (const reparam::io_error&) {
        // Values outside int32 are reported, which is the documented behaviour.
      }
    }
  }
}

// An accepted file, written back by safetensors_writer and read again, must hold the same
// tensors (names, dtypes, shapes, bytes) and metadata.
void round_trip(const safetensors_file& file) {
  reparam::io::safetensors_writer writer;
  for (const auto& [key, value] : file.metadata()) {
    writer.set_metadata(key, value);
  }
  for (const tensor_info& info : file.tensors()) {
    if (info.name.empty()) {
      return;  // the format allows an empty name; the writer refuses to create one
    }
    writer.add(info.name, info.type, info.shape, file.bytes(info.name), info.size_bytes());
  }
  const safetensors_file copy = safetensors_file::from_buffer(writer.to_bytes(), "round trip");
  require(copy.metadata() == file.metadata(), "metadata changed", "");
  require(copy.tensors().size() == file.tensors().size(), "tensor count changed", "");
  for (const tensor_info& info : file.tensors()) {
    const tensor_info& again = copy.info(info.name);
    require(again.type == info.type && again.shape == info.shape, "type or shape changed",
            info.name);
    require(info.size_bytes() == 0 ||
                std::memcmp(copy.bytes(info.name), file.bytes(info.name), info.size_bytes()) == 0,
            "bytes changed", info.name);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> image(size);
  if (size > 0) {
    std::memcpy(image.data(), data, size);
  }
  std::optional<safetensors_file> file;
  try {
    file.emplace(safetensors_file::from_buffer(std::move(image), "fuzz input"));
  } catch (const reparam::io_error&) {
    return 0;  // a rejected file: the expected outcome for most inputs
  }
  // Accepted: from here on any exception escapes and counts as a crash.
  touch(*file, size);
  round_trip(*file);
  return 0;
}
