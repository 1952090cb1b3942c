// SPDX-License-Identifier: Apache-2.0
// safetensors_file on the bundled real checkpoint (llama2.c stories260K): header metadata, tensor
// list, and every weight compared bit for bit with the original llama2.c .bin file, read here by
// an independent parser; plus the greedy-decoding reference file.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/io/safetensors.hpp>

#include "io_test_helpers.hpp"

namespace {

using reparam::io::safetensors_file;

struct expected_tensor {
  const char* name;
  std::vector<reparam::index> shape;
};

// The llama2.c "version 0" order of the float arrays after the 7-int header
// (data/llama2c_stories260K/README.md); the safetensors copy has the same tensors, same order.
const std::vector<expected_tensor>& llama2c_tensors() {
  static const std::vector<expected_tensor> tensors = {{"token_embedding", {512, 64}},
                                                       {"rms_att", {5, 64}},
                                                       {"wq", {5, 64, 64}},
                                                       {"wk", {5, 32, 64}},
                                                       {"wv", {5, 32, 64}},
                                                       {"wo", {5, 64, 64}},
                                                       {"rms_ffn", {5, 64}},
                                                       {"w1", {5, 172, 64}},
                                                       {"w2", {5, 64, 172}},
                                                       {"w3", {5, 172, 64}},
                                                       {"rms_final", {64}}};
  return tensors;
}

}  // namespace

TEST_CASE("stories260K.safetensors carries the llama2.c header values as metadata", "[io][real]") {
  const safetensors_file file =
      safetensors_file::open(io_test::data_path("stories260K.safetensors"));
  const std::map<std::string, std::string>& metadata = file.metadata();
  CHECK(metadata.at("dim") == "64");
  CHECK(metadata.at("hidden_dim") == "172");
  CHECK(metadata.at("n_layers") == "5");
  CHECK(metadata.at("n_heads") == "8");
  CHECK(metadata.at("n_kv_heads") == "4");
  CHECK(metadata.at("vocab_size") == "512");
  CHECK(metadata.at("seq_len") == "512");
  CHECK(file.path() == io_test::data_path("stories260K.safetensors"));
}

TEST_CASE("stories260K.safetensors lists every weight with its shape in data order", "[io][real]") {
  const safetensors_file file =
      safetensors_file::open(io_test::data_path("stories260K.safetensors"));
  const std::vector<expected_tensor>& expected = llama2c_tensors();
  REQUIRE(file.tensors().size() == expected.size());
  reparam::index parameters = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const reparam::io::tensor_info& info = file.tensors()[i];
    CAPTURE(i, info.name);
    CHECK(info.name == expected[i].name);
    CHECK(info.type == reparam::io::dtype::f32);
    CHECK(info.shape == expected[i].shape);
    CHECK(file.contains(expected[i].name));
    parameters += info.numel();
  }
  CHECK(parameters == 260032);  // README: parameters excluding freq_cis
  CHECK(file.matrix_f32("wq").rows() == 5);
  CHECK(file.matrix_f32("wq").cols() == 64 * 64);
  CHECK(file.matrix_f32("rms_final").rows() == 1);
  CHECK(file.matrix_f32("rms_final").cols() == 64);
}

TEST_CASE("stories260K.safetensors matches the llama2.c checkpoint bit for bit", "[io][real]") {
  // Independent oracle: the original .bin read as 7 int32 then float32 arrays.
  const std::vector<std::byte> bin = io_test::read_file(io_test::data_path("stories260K.bin"));
  REQUIRE(bin.size() == 1056540);
  std::int32_t config[7];
  std::memcpy(config, bin.data(), sizeof config);
  CHECK(std::vector<std::int32_t>(config, config + 7) ==
        std::vector<std::int32_t>{64, 172, 5, 8, 4, 512, 512});

  const safetensors_file file =
      safetensors_file::open(io_test::data_path("stories260K.safetensors"));
  std::size_t offset = sizeof config;
  for (const expected_tensor& tensor : llama2c_tensors()) {
    CAPTURE(tensor.name, offset);
    const reparam::io::tensor_info& info = file.info(tensor.name);
    const std::size_t size = info.size_bytes();
    REQUIRE(offset + size <= bin.size());
    // The zero-copy view, the raw bytes and the converted copies all agree with the oracle.
    CHECK(std::memcmp(file.data_f32(tensor.name), bin.data() + offset, size) == 0);
    CHECK(std::memcmp(file.bytes(tensor.name), bin.data() + offset, size) == 0);
    const std::vector<float> copy = file.to_float(tensor.name);
    CHECK(std::memcmp(copy.data(), bin.data() + offset, size) == 0);
    const reparam::matrix<float> loaded = file.load_matrix(tensor.name);
    CHECK(loaded == file.matrix_f32(tensor.name));
    offset += size;
  }
  // What remains is the two unused freq_cis tables, [512, 4] floats each.
  CHECK(bin.size() - offset == 2 * 512 * 4 * sizeof(float));
}

TEST_CASE("stories260K_ref_greedy.safetensors holds the greedy tokens and their logits",
          "[io][real]") {
  const safetensors_file file =
      safetensors_file::open(io_test::data_path("stories260K_ref_greedy.safetensors"));
  REQUIRE(file.contains("tokens"));
  REQUIRE(file.contains("logits_first32"));
  const reparam::io::tensor_info& tokens_info = file.info("tokens");
  CHECK(tokens_info.type == reparam::io::dtype::i32);
  CHECK(tokens_info.shape == std::vector<reparam::index>{201});
  const std::vector<std::int32_t> tokens = file.to_int32("tokens");
  REQUIRE(tokens.size() == 201);
  const std::vector<std::int32_t> first(tokens.begin(), tokens.begin() + 16);
  CHECK(first == std::vector<std::int32_t>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315,
                                           421, 395, 317, 426});
  CHECK(
      std::all_of(tokens.begin(), tokens.end(), [](std::int32_t t) { return t >= 0 && t < 512; }));

  const reparam::io::tensor_info& logits_info = file.info("logits_first32");
  CHECK(logits_info.type == reparam::io::dtype::f32);
  CHECK(logits_info.shape == std::vector<reparam::index>{32, 512});
  const auto logits = file.matrix_f32("logits_first32");
  REQUIRE(logits.allFinite());
  // Greedy decoding: the argmax of the logits after tokens[0..i] is tokens[i + 1].
  for (reparam::index i = 0; i < 32; ++i) {
    reparam::index argmax = 0;
    logits.row(i).maxCoeff(&argmax);
    CAPTURE(i);
    CHECK(argmax == tokens[static_cast<std::size_t>(i) + 1]);
  }
}

TEST_CASE("the real checkpoint survives a write and reopen bit for bit", "[io][real]") {
  const safetensors_file original =
      safetensors_file::open(io_test::data_path("stories260K.safetensors"));
  reparam::io::safetensors_writer writer;
  for (const auto& [key, value] : original.metadata()) {
    writer.set_metadata(key, value);
  }
  for (const reparam::io::tensor_info& info : original.tensors()) {
    writer.add(info.name, info.type, info.shape, original.bytes(info.name), info.size_bytes());
  }
  const std::string path = io_test::scratch_path("stories260K_copy.safetensors");
  writer.write(path);
  const safetensors_file copy = safetensors_file::open(path);
  CHECK(copy.metadata() == original.metadata());
  REQUIRE(copy.tensors().size() == original.tensors().size());
  for (std::size_t i = 0; i < copy.tensors().size(); ++i) {
    const reparam::io::tensor_info& a = original.tensors()[i];
    const reparam::io::tensor_info& b = copy.tensors()[i];
    CAPTURE(a.name);
    CHECK(a.name == b.name);  // F32 only, so the writer keeps insertion order
    CHECK(a.shape == b.shape);
    CHECK(a.data_begin == b.data_begin);
    CHECK(std::memcmp(original.bytes(a.name), copy.bytes(b.name), a.size_bytes()) == 0);
  }
}
