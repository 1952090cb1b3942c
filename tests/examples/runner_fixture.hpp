// SPDX-License-Identifier: Apache-2.0
// Shared setup for the runner tests: bundled data paths, the reference greedy run, scratch files.
#ifndef REPARAM_TESTS_EXAMPLES_RUNNER_FIXTURE_HPP
#define REPARAM_TESTS_EXAMPLES_RUNNER_FIXTURE_HPP

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <reparam/core/views.hpp>
#include <reparam/io/safetensors.hpp>

#include "runner/model.hpp"
#include "runner/tokenizer.hpp"

namespace runner_test {

inline std::string data_path(const std::string& relative) {
  return std::string(REPARAM_DATA_DIR) + "/" + relative;
}

inline const std::string model_bin = data_path("llama2c_stories260K/stories260K.bin");
inline const std::string model_safetensors =
    data_path("llama2c_stories260K/stories260K.safetensors");
inline const std::string tokenizer_bin = data_path("llama2c_stories260K/tok512.bin");
inline const std::string sample_txt = data_path("tinystories_text/tinystories_sample_cs336.txt");
inline const std::string valid_head_txt = data_path("tinystories_text/tinystories_valid_head.txt");

/// stories260K_ref_greedy.safetensors: an independent numpy forward pass.
struct greedy_reference {
  std::vector<int> tokens;        // BOS + 200 greedy tokens
  reparam::matrix<float> logits;  // [32, 512]: logits after feeding tokens[0..i]
};

inline const greedy_reference& reference() {
  static const greedy_reference ref = [] {
    const auto file = reparam::io::safetensors_file::open(
        data_path("llama2c_stories260K/stories260K_ref_greedy.safetensors"));
    greedy_reference r;
    for (const std::int32_t t : file.to_int32("tokens")) r.tokens.push_back(t);
    r.logits = file.load_matrix("logits_first32");
    return r;
  }();
  return ref;
}

inline const llama::tokenizer& tok512() {
  static const llama::tokenizer tok = llama::tokenizer::load(tokenizer_bin, 512);
  return tok;
}

/// A scratch path in the test binary directory.
inline std::string scratch_path(const std::string& name) {
  return std::string(REPARAM_TEST_BINARY_DIR) + "/runner_test_" + name;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace runner_test

#endif  // REPARAM_TESTS_EXAMPLES_RUNNER_FIXTURE_HPP
