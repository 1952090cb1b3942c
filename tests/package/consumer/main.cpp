// SPDX-License-Identifier: Apache-2.0
// Uses the public API through the umbrella header: version, Philox, row ranges, and a safetensors
// round trip through a temporary file.
#include <cstdio>
#include <string>

#include <reparam/reparam.hpp>

int main() {
  const std::string version = std::to_string(REPARAM_VERSION_MAJOR) + "." +
                              std::to_string(REPARAM_VERSION_MINOR) + "." +
                              std::to_string(REPARAM_VERSION_PATCH);
  if (version != EXPECTED_VERSION) {
    std::fprintf(stderr, "version %s != %s\n", version.c_str(), EXPECTED_VERSION);
    return 1;
  }
  if (reparam::philox4x32_10({0, 0, 0, 0}, {0, 0})[0] != 0x6627e8d5u) return 2;
  if (reparam::split_rows_part(10, 2, 1).begin != 5) return 3;

  reparam::matrix<float> w = reparam::matrix<float>::Random(3, 5);
  reparam::io::safetensors_writer writer;
  writer.add("w", w);
  const std::string path = "consumer_roundtrip.safetensors";
  writer.write(path);
  const auto file = reparam::io::safetensors_file::open(path);
  if (file.matrix_f32("w") != w) return 4;
  std::printf("reparam %s consumer ok\n", version.c_str());
  return 0;
}
