// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the io tests: build safetensors images byte by byte (so malformed files are
// generated in the test, never committed), and read and write scratch files.
#ifndef REPARAM_TESTS_IO_IO_TEST_HELPERS_HPP
#define REPARAM_TESTS_IO_IO_TEST_HELPERS_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace io_test {

/// An image with an explicit length field (which may lie), then `header`, then `data_bytes`
/// bytes of data (value i & 0xff at position i).
inline std::vector<std::byte> make_image_with_length(std::uint64_t length_field,
                                                     std::string_view header,
                                                     std::size_t data_bytes) {
  std::vector<std::byte> image;
  for (int i = 0; i < 8; ++i) {
    image.push_back(static_cast<std::byte>((length_field >> (8 * i)) & 0xffu));
  }
  for (const char c : header) {
    image.push_back(static_cast<std::byte>(c));
  }
  for (std::size_t i = 0; i < data_bytes; ++i) {
    image.push_back(static_cast<std::byte>(i & 0xffu));
  }
  return image;
}

/// A well-formed length prefix for `header`, then `data_bytes` bytes of data.
inline std::vector<std::byte> make_image(std::string_view header, std::size_t data_bytes) {
  return make_image_with_length(header.size(), header, data_bytes);
}

/// A path in the test binary directory, unique per test name.
inline std::string scratch_path(std::string_view name) {
  return std::string(REPARAM_TEST_BINARY_DIR) + "/io_test_" + std::string(name);
}

inline void write_file(const std::string& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<std::byte> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> chars((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  if (!chars.empty()) {
    std::memcpy(bytes.data(), chars.data(), chars.size());
  }
  return bytes;
}

inline std::string data_path(std::string_view file) {
  return std::string(REPARAM_DATA_DIR) + "/llama2c_stories260K/" + std::string(file);
}

}  // namespace io_test

#endif  // REPARAM_TESTS_IO_IO_TEST_HELPERS_HPP
