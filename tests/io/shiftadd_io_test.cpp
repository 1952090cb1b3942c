// SPDX-License-Identifier: Apache-2.0
// io/shiftadd.hpp: binary-coded matrices through safetensors files. Bit-exact round trips (both
// scale axes, offsets, APoT, padding columns), the documented names/dtypes/shapes/metadata, the
// product of a reloaded matrix equal to the original's, and clear io_errors for every kind of
// corruption the loader must catch.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/io/safetensors.hpp>
#include <reparam/io/shiftadd.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>

#include "io_test_helpers.hpp"
#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using reparam::io::dtype;
using reparam::io::safetensors_file;
using reparam::io::safetensors_writer;
using reparam::shiftadd::apot_term;
using reparam::shiftadd::bcq_shape;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::scale_axis;

/// Random codes and offsets; scales either uniform in (0, 1) or, with APoT, exact sums of
/// `apot_terms` random signed powers of two (exponents in [-12, 1]) written into the terms.
binary_coded_matrix random_matrix(const bcq_shape& shape, std::uint64_t seed) {
  binary_coded_matrix m(shape);
  reparam::philox_engine engine(seed, 7);
  const unsigned code_mask = (1u << shape.bits) - 1u;
  for (reparam::index r = 0; r < m.rows(); ++r) {
    for (reparam::index c = 0; c < m.cols(); ++c) {
      m.set_code(r, c, static_cast<std::uint8_t>(engine() & code_mask));
    }
  }
  for (float& o : m.offsets()) {
    o = static_cast<float>(reparam::uniform_open01_double(engine(), engine()) - 0.5);
  }
  for (reparam::index major = 0; major < m.scale_major(); ++major) {
    for (reparam::index group = 0; group < m.groups(); ++group) {
      for (int p = 0; p < m.bits(); ++p) {
        float& scale = m.scales_of(major, group)[p];
        if (shape.apot_terms == 0) {
          scale = static_cast<float>(reparam::uniform_open01_double(engine(), engine()));
          continue;
        }
        apot_term* terms = m.apot_of(major, group, p);
        double sum = 0.0;
        for (int k = 0; k < shape.apot_terms; ++k) {
          const std::uint32_t bits = engine();
          terms[k].sign = static_cast<std::int8_t>(static_cast<int>(bits % 3u) - 1);
          terms[k].exponent = static_cast<std::int8_t>(static_cast<int>((bits >> 8) % 14u) - 12);
          sum += terms[k].sign * std::ldexp(1.0, terms[k].exponent);
        }
        scale = static_cast<float>(sum);  // exact: 14 binades fit in a float
      }
    }
  }
  return m;
}

/// Same size and the same bytes (so -0.0 != 0.0 and NaN payloads count).
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

void require_identical(const binary_coded_matrix& a, const binary_coded_matrix& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  REQUIRE(a.bits() == b.bits());
  REQUIRE(a.group_size() == b.group_size());
  REQUIRE(a.axis() == b.axis());
  REQUIRE(a.apot_terms() == b.apot_terms());
  REQUIRE(a.has_offsets() == b.has_offsets());
  REQUIRE(a.planes() == b.planes());
  CHECK(same_bytes(a.scales(), b.scales()));
  CHECK(same_bytes(a.offsets(), b.offsets()));
  CHECK(same_bytes(a.apot(), b.apot()));
}

/// A safetensors file as editable parts: tensors by name (dtype, shape, raw bytes) and metadata.
struct file_parts {
  struct tensor {
    dtype type = dtype::f32;
    std::vector<reparam::index> shape;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, tensor> tensors;
  std::map<std::string, std::string> metadata;

  static file_parts of(const safetensors_file& file) {
    file_parts parts;
    parts.metadata = file.metadata();
    for (const reparam::io::tensor_info& info : file.tensors()) {
      const std::byte* first = file.bytes(info.name);
      parts.tensors[info.name] = {info.type, info.shape,
                                  std::vector<std::byte>(first, first + info.size_bytes())};
    }
    return parts;
  }

  safetensors_file to_file() const {
    safetensors_writer writer;
    for (const auto& [key, value] : metadata) {
      writer.set_metadata(key, value);
    }
    for (const auto& [name, t] : tensors) {
      writer.add(name, t.type, t.shape, t.bytes.data(), t.bytes.size());
    }
    return safetensors_file::from_buffer(writer.to_bytes(), "corrupt.safetensors");
  }
};

/// The parts of a file holding `m` under the prefix "w".
file_parts parts_of(const binary_coded_matrix& m) {
  safetensors_writer writer;
  reparam::io::save_binary_coded(writer, "w", m);
  return file_parts::of(safetensors_file::from_buffer(writer.to_bytes()));
}

std::string load_error(const file_parts& parts) {
  const safetensors_file file = parts.to_file();
  try {
    reparam::io::load_binary_coded(file, "w");
  } catch (const reparam::io_error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("binary-coded matrices round trip bit for bit through a file", "[shiftadd][io]") {
  const std::uint64_t seed = reparam::test::test_seed(21);
  CAPTURE(seed);
  std::map<std::string, binary_coded_matrix> matrices;
  matrices.emplace("layers.0.wq", random_matrix({8, 64, 3, 32, scale_axis::rows}, seed));
  matrices.emplace("layers.0.w2",
                   random_matrix({6, 70, 2, 0, scale_axis::rows, 0, true}, seed + 1));
  matrices.emplace("layers.1.wk",
                   random_matrix({12, 33, 4, 4, scale_axis::columns, 3, false}, seed + 2));
  matrices.emplace("apot_offsets",
                   random_matrix({5, 96, 8, 32, scale_axis::rows, 2, true}, seed + 3));
  matrices.emplace("one_bit", random_matrix({1, 1, 1, 0, scale_axis::columns, 8, true}, seed + 4));
  const std::string path = io_test::scratch_path("bcq_round_trip.safetensors");
  reparam::io::write_binary_coded_file(path, matrices, {{"model", "stories260K"}, {"bits", "3"}});

  std::map<std::string, std::string> metadata;
  const auto loaded = reparam::io::read_binary_coded_file(path, &metadata);
  CHECK(metadata == std::map<std::string, std::string>{{"model", "stories260K"}, {"bits", "3"}});
  REQUIRE(loaded.size() == matrices.size());
  for (const auto& [name, original] : matrices) {
    CAPTURE(name);
    REQUIRE(loaded.count(name) == 1);
    const binary_coded_matrix& copy = loaded.at(name);
    require_identical(copy, original);
    // The product of the reloaded matrix is the original's, bit for bit.
    const reparam::matrix<float> x = reparam::test::random_matrix(3, original.cols(), seed + 9);
    reparam::matrix<float> y_original(3, original.rows());
    reparam::matrix<float> y_copy(3, original.rows());
    reparam::shiftadd::multiply(original, x, y_original);
    reparam::shiftadd::multiply(copy, x, y_copy);
    CHECK(std::memcmp(y_original.data(), y_copy.data(),
                      static_cast<std::size_t>(y_copy.size()) * sizeof(float)) == 0);
  }
  // The single-matrix API reads the same file.
  const safetensors_file file = safetensors_file::open(path);
  CHECK(reparam::io::binary_coded_names(file) ==
        std::vector<std::string>{"apot_offsets", "layers.0.w2", "layers.0.wq", "layers.1.wk",
                                 "one_bit"});
  require_identical(reparam::io::load_binary_coded(file, "layers.1.wk"),
                    matrices.at("layers.1.wk"));
}

TEST_CASE("save_binary_coded writes the documented names, dtypes, shapes and metadata",
          "[shiftadd][io]") {
  // 6 x 70, 2 bits, column groups of 3 rows (2 groups per column), APoT with 3 terms, offsets.
  const binary_coded_matrix m = random_matrix({6, 70, 2, 3, scale_axis::columns, 3, true}, 5);
  safetensors_writer writer;
  reparam::io::save_binary_coded(writer, "layers.4.w3", m);
  const safetensors_file file = safetensors_file::from_buffer(writer.to_bytes());
  REQUIRE(file.tensors().size() == 4);
  const auto expect = [&](const char* name, dtype type, std::vector<reparam::index> shape) {
    CAPTURE(name);
    REQUIRE(file.contains(name));
    CHECK(file.info(name).type == type);
    CHECK(file.info(name).shape == shape);
  };
  expect("layers.4.w3.planes", dtype::u32, {2, 6, 3});  // 70 columns -> 3 words per row
  expect("layers.4.w3.scales", dtype::f32, {70, 2, 2});
  expect("layers.4.w3.offsets", dtype::f32, {70, 2});
  expect("layers.4.w3.apot", dtype::i8, {70, 2, 2, 3, 2});
  CHECK(file.metadata() == std::map<std::string, std::string>{
                               {"reparam.shiftadd.format", "bcq/1"},
                               {"layers.4.w3.bcq",
                                "{\"rows\":6,\"cols\":70,\"bits\":2,\"group_size\":3,\"axis\":"
                                "\"columns\",\"apot_terms\":3,\"has_offsets\":true}"}});
  // The plane words are the matrix's own words, in [plane, row, word] order.
  std::vector<std::uint32_t> words(m.planes().size());
  std::memcpy(words.data(), file.bytes("layers.4.w3.planes"), words.size() * 4);
  CHECK(words == m.planes());
  CHECK(words[(1 * 6 + 4) * 3 + 2] == m.plane_row(1, 4)[2]);
}

TEST_CASE("load_binary_coded rejects corrupted files with clear io_errors", "[shiftadd][io]") {
  // 3 x 40 (8 padding bits in each last word), 2 bits, row groups of 20, APoT with 2 terms.
  const binary_coded_matrix m = random_matrix({3, 40, 2, 20, scale_axis::rows, 2, false}, 9);
  const file_parts valid = parts_of(m);
  REQUIRE(load_error(valid) == "(no error)");
  const std::string where = "io::load_binary_coded: 'corrupt.safetensors': ";
  const std::string matrix = where + "matrix 'w': ";

  SECTION("wrong or missing format version") {
    file_parts p = valid;
    p.metadata["reparam.shiftadd.format"] = "bcq/2";
    CHECK_THAT(load_error(p), Equals(where + "metadata 'reparam.shiftadd.format' is 'bcq/2' but "
                                             "this reader supports 'bcq/1'"));
    p.metadata.erase("reparam.shiftadd.format");
    CHECK_THAT(load_error(p), Equals(where + "no metadata key 'reparam.shiftadd.format' (not a "
                                             "reparam binary-coded weight file)"));
  }
  SECTION("missing matrix, tensor or metadata field") {
    const safetensors_file file = valid.to_file();
    REQUIRE_THROWS_WITH(reparam::io::load_binary_coded(file, "v"),
                        Equals(where + "matrix 'v': no metadata key 'v.bcq' (the file has 2 "
                                       "metadata keys and 3 tensors)"));
    file_parts p = valid;
    p.tensors.erase("w.scales");
    CHECK_THAT(load_error(p), Equals(matrix + "tensor 'w.scales' is missing"));
    p = valid;
    p.metadata["w.bcq"] = R"({"rows":3,"cols":40,"bits":2,"axis":"rows","apot_terms":2,)"
                          R"("has_offsets":false})";
    CHECK_THAT(load_error(p), Equals(matrix + "metadata 'w.bcq' has no \"group_size\""));
    p.metadata["w.bcq"] = "{\"rows\":3";
    CHECK_THAT(load_error(p),
               Equals(matrix + "metadata 'w.bcq' is not a JSON object: '{\"rows\":3'"));
  }
  SECTION("metadata values out of range or inconsistent") {
    const auto with_metadata = [&](const std::string& json) {
      file_parts p = valid;
      p.metadata["w.bcq"] = json;
      return load_error(p);
    };
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":9,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":false})"),
               Equals(matrix + "metadata \"bits\" is 9, outside [1, 8]"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":16,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":false})"),
               Equals(matrix + "metadata \"group_size\" 16 does not divide cols 40"));
    CHECK_THAT(with_metadata(R"({"rows":-3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":false})"),
               Equals(matrix + "metadata \"rows\" is -3, outside [1, 1099511627776]"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"diagonal",)"
                             R"("apot_terms":2,"has_offsets":false})"),
               Equals(matrix + "metadata \"axis\" is \"diagonal\"; expected \"rows\" or "
                               "\"columns\""));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":0})"),
               Equals(matrix + "metadata \"has_offsets\" is 0; expected a boolean"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":false,"extra":1})"),
               Equals(matrix + "metadata 'w.bcq' has unknown field 'extra'"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2.5,"has_offsets":false})"),
               Equals(matrix + "metadata \"apot_terms\" is 2.5, not an integer"));
    // Options that contradict the tensors: 4 rows, or offsets promised but absent.
    CHECK_THAT(with_metadata(R"({"rows":4,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":false})"),
               Equals(matrix + "tensor 'w.planes' has shape [2, 3, 2] but 'w.bcq' implies "
                               "[2, 4, 2]"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":2,"has_offsets":true})"),
               Equals(matrix + "tensor 'w.offsets' is missing"));
    CHECK_THAT(with_metadata(R"({"rows":3,"cols":40,"bits":2,"group_size":20,"axis":"rows",)"
                             R"("apot_terms":0,"has_offsets":false})"),
               Equals(matrix + "tensor 'w.apot' is present but 'w.bcq' does not call for it"));
  }
  SECTION("wrong dtype or shape of a tensor") {
    file_parts p = valid;
    p.tensors["w.planes"].type = dtype::i32;
    CHECK_THAT(load_error(p), Equals(matrix + "tensor 'w.planes' has dtype I32; expected U32"));
    p = valid;
    p.tensors["w.scales"].shape = {3, 4, 1};
    CHECK_THAT(load_error(p), Equals(matrix + "tensor 'w.scales' has shape [3, 4, 1] but 'w.bcq' "
                                              "implies [3, 2, 2]"));
  }
  SECTION("APoT terms that do not add up to the scale, or a bad sign") {
    file_parts p = valid;
    float scale = 0.0f;
    std::memcpy(&scale, p.tensors["w.scales"].bytes.data() + 4 * 5, 4);  // [1, 0, 1]
    const float changed = std::nextafter(scale, 10.0f);
    std::memcpy(p.tensors["w.scales"].bytes.data() + 4 * 5, &changed, 4);
    CHECK_THAT(load_error(p), Contains("tensor 'w.apot' [1, 0, 1] sums to ") &&
                                  Contains("(APoT terms must add up to the float scale exactly)"));
    p = valid;
    p.tensors["w.apot"].bytes[2] = std::byte{2};  // term [0, 0, 0, 1].sign
    CHECK_THAT(load_error(p), Equals(matrix + "tensor 'w.apot' [0, 0, 0, 1] has sign 2; "
                                              "expected -1, 0 or +1"));
  }
  SECTION("padding bits past the last column") {
    file_parts p = valid;
    // Plane 1, row 2, word 1 holds columns 32..39; bit 8 is column 40, which does not exist.
    std::uint32_t word = 0;
    std::byte* at = p.tensors["w.planes"].bytes.data() + 4 * ((1 * 3 + 2) * 2 + 1);
    std::memcpy(&word, at, 4);
    word |= 1u << 8;
    std::memcpy(at, &word, 4);
    CHECK_THAT(load_error(p), Contains(matrix + "tensor 'w.planes' [1, 2, 1] = ") &&
                                  Contains(" has padding bits set past column 40 (must be zero)"));
  }
  SECTION("non-finite scales or offsets") {
    const binary_coded_matrix plain = random_matrix({2, 8, 1, 0, scale_axis::rows, 0, true}, 3);
    file_parts p = parts_of(plain);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(p.tensors["w.offsets"].bytes.data() + 4, &nan, 4);
    CHECK_THAT(load_error(p), Equals(matrix + "tensor 'w.offsets' element 1 is nan (scales and "
                                              "offsets must be finite)"));
  }
}

TEST_CASE("read_binary_coded_file rejects tensors that belong to no matrix", "[shiftadd][io]") {
  file_parts p = parts_of(random_matrix({2, 8, 1, 0}, 4));
  p.tensors["w.extra"] = {dtype::f32, {1}, std::vector<std::byte>(4)};
  const std::string path = io_test::scratch_path("bcq_orphan.safetensors");
  io_test::write_file(path, [&] {
    safetensors_writer writer;
    for (const auto& [key, value] : p.metadata) {
      writer.set_metadata(key, value);
    }
    for (const auto& [name, t] : p.tensors) {
      writer.add(name, t.type, t.shape, t.bytes.data(), t.bytes.size());
    }
    return writer.to_bytes();
  }());
  REQUIRE_THROWS_WITH(reparam::io::read_binary_coded_file(path),
                      Equals("io::read_binary_coded_file: '" + path +
                             "': tensor 'w.extra' belongs to no binary-coded matrix"));
  // A file without the format version is not a binary-coded weight file.
  REQUIRE_THROWS_WITH(
      reparam::io::read_binary_coded_file(io_test::data_path("stories260K.safetensors")),
      Contains("io::binary_coded_names: '") &&
          Contains("': no metadata key 'reparam.shiftadd.format'"));
}

TEST_CASE("writing binary-coded files rejects empty names and reserved metadata keys",
          "[shiftadd][io]") {
  const binary_coded_matrix m = random_matrix({2, 8, 1, 0}, 6);
  safetensors_writer writer;
  REQUIRE_THROWS_WITH(reparam::io::save_binary_coded(writer, "", m),
                      Equals("io::save_binary_coded: name_prefix is empty"));
  REQUIRE_THROWS_WITH(reparam::io::save_binary_coded(writer, "e", binary_coded_matrix()),
                      Equals("io::save_binary_coded: matrix 'e' is empty (0x0)"));
  reparam::io::save_binary_coded(writer, "w", m);
  REQUIRE_THROWS_AS(reparam::io::save_binary_coded(writer, "w", m), reparam::error);
  const std::string path = io_test::scratch_path("bcq_reserved.safetensors");
  REQUIRE_THROWS_WITH(
      reparam::io::write_binary_coded_file(path, {{"w", m}}, {{"notes.bcq", "x"}}),
      Equals("io::write_binary_coded_file: metadata key 'notes.bcq' is reserved by the "
             "binary-coded format"));
  REQUIRE_THROWS_WITH(
      reparam::io::write_binary_coded_file(path, {{"w", m}}, {{"reparam.shiftadd.format", "x"}}),
      Equals("io::write_binary_coded_file: metadata key 'reparam.shiftadd.format' is reserved "
             "by the binary-coded format"));
}
