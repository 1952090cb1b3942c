// SPDX-License-Identifier: Apache-2.0
// Tests for safetensors_writer: bit-exact round trips of every dtype through write() and the
// reader, the deterministic header and aligned layout, atomic replacement (failures leave the
// target untouched and no temporary behind), and argument checks.
#include <csignal>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/views.hpp>
#include <reparam/io/safetensors.hpp>

#include "io_test_helpers.hpp"
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>

namespace {

using reparam::io::dtype;
using reparam::io::safetensors_file;
using reparam::io::safetensors_writer;

// Raw bytes for `count` elements of `type`, including the awkward patterns of each type: NaN
// payloads (signalling too), -0, subnormals, infinities, integer extremes.
std::vector<std::byte> special_bytes(dtype type, std::size_t count) {
  std::vector<std::byte> bytes(count * reparam::io::dtype_size(type));
  std::vector<std::uint64_t> patterns;
  switch (reparam::io::dtype_size(type)) {
    case 8:
      patterns = {0x7ff0000000000001u, 0xfff8000000000123u, 0x8000000000000000u,
                  0x0000000000000001u, 0x7ff0000000000000u, 0x7fffffffffffffffu,
                  0x8000000000000000u, 0x3ff0000000000000u};
      break;
    case 4:
      patterns = {0x7fa00001u, 0xffc00123u, 0x80000000u, 0x00000001u,
                  0x7f800000u, 0x7fffffffu, 0x80000000u, 0x3f800000u};
      break;
    case 2:
      patterns = {0x7c01u, 0xfe01u, 0x8000u, 0x0001u, 0x7c00u, 0x7f81u, 0xffffu, 0x3c00u};
      break;
    default:
      patterns = {0x7fu, 0xffu, 0x80u, 0x01u, 0x00u, 0x7cu, 0xfeu, 0x3cu};
  }
  const std::size_t size = reparam::io::dtype_size(type);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t value = patterns[i % patterns.size()] ^ (i / patterns.size());
    std::memcpy(bytes.data() + i * size, &value, size);  // little-endian host
  }
  return bytes;
}

std::vector<std::string> files_in(const std::string& directory) {
  std::vector<std::string> names;
  if (DIR* dir = ::opendir(directory.c_str())) {
    while (const dirent* entry = ::readdir(dir)) {
      names.emplace_back(entry->d_name);
    }
    ::closedir(dir);
  }
  return names;
}

bool has_temporary_for(const std::string& directory, const std::string& base) {
  for (const std::string& name : files_in(directory)) {
    if (name.rfind(base + ".tmp.", 0) == 0) {
      return true;
    }
  }
  return false;
}

// Limits the size of files this process may write; failures then show up as EFBIG (SIGXFSZ is
// ignored so the write returns the error instead of killing the process). Works as root too.
class file_size_limit {
 public:
  explicit file_size_limit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  file_size_limit(const file_size_limit&) = delete;
  file_size_limit& operator=(const file_size_limit&) = delete;
  ~file_size_limit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("safetensors_writer round trips every dtype bit for bit", "[io][writer]") {
  safetensors_writer writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata("unicode", "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93");
  std::vector<std::vector<std::byte>> sources;
  for (const dtype type : reparam::io::all_dtypes) {
    sources.push_back(special_bytes(type, 3 * 5));
    writer.add(std::string("t_") + std::string(reparam::io::dtype_name(type)), type, {3, 5},
               sources.back().data(), sources.back().size());
  }
  writer.add("scalar", dtype::f32, {}, sources[1].data(), 4);
  writer.add("empty", dtype::bf16, {0, 7}, nullptr, 0);
  const std::string path = io_test::scratch_path("round_trip.safetensors");
  writer.write(path);

  const safetensors_file file = safetensors_file::open(path);
  REQUIRE(file.tensors().size() == reparam::io::all_dtypes.size() + 2);
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.metadata().at("unicode") == "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93");
  for (std::size_t i = 0; i < reparam::io::all_dtypes.size(); ++i) {
    const dtype type = reparam::io::all_dtypes[i];
    const std::string name = std::string("t_") + std::string(reparam::io::dtype_name(type));
    CAPTURE(name);
    const reparam::io::tensor_info& info = file.info(name);
    CHECK(info.type == type);
    CHECK(info.shape == std::vector<reparam::index>{3, 5});
    REQUIRE(info.size_bytes() == sources[i].size());
    CHECK(std::memcmp(file.bytes(name), sources[i].data(), sources[i].size()) == 0);
  }
  CHECK(file.info("scalar").shape.empty());
  CHECK(std::memcmp(file.bytes("scalar"), sources[1].data(), 4) == 0);
  CHECK(file.info("empty").numel() == 0);
  CHECK(file.to_float("empty").empty());
  // The F32 special values come back through the zero-copy view too.
  const float* f32 = file.data_f32("t_F32");
  CHECK(std::memcmp(f32, sources[1].data(), sources[1].size()) == 0);
}

TEST_CASE("safetensors_writer stores Eigen matrices row-major and converts nothing",
          "[io][writer]") {
  reparam::matrix<float> weights(3, 4);
  reparam::matrix<double> doubles(2, 3);
  for (reparam::index i = 0; i < weights.size(); ++i) {
    weights.data()[i] = static_cast<float>(i) * 0.25f - 1.f;
  }
  doubles << 1e-310, -0.0, 3.0, std::numeric_limits<double>::max(), 1.0 / 3.0, -2.5;
  safetensors_writer writer;
  writer.add("weights", weights);
  writer.add("doubles", doubles);
  writer.add("block", weights.middleCols(1, 2));  // strided block: packed on the way out
  writer.add("row", weights.row(2));
  const safetensors_file file = safetensors_file::from_buffer(writer.to_bytes(), "eigen");

  CHECK(file.info("weights").shape == std::vector<reparam::index>{3, 4});
  CHECK(file.matrix_f32("weights") == weights);
  CHECK(file.info("doubles").type == dtype::f64);
  CHECK(std::memcmp(file.bytes("doubles"), doubles.data(), 6 * sizeof(double)) == 0);
  CHECK(file.load_matrix("doubles") == doubles.cast<float>());
  const reparam::matrix<float> block = weights.middleCols(1, 2);
  CHECK(file.info("block").shape == std::vector<reparam::index>{3, 2});
  CHECK(file.matrix_f32("block") == block);
  CHECK(file.info("row").shape == std::vector<reparam::index>{1, 4});
  CHECK(file.matrix_f32("row") == weights.row(2));
}

TEST_CASE("safetensors_writer output is deterministic, padded and aligned", "[io][writer]") {
  const std::vector<std::uint16_t> halves = {1, 2, 3};  // 6 bytes: would misalign what follows
  const std::vector<float> floats = {1.f, 2.f};
  const std::vector<double> doubles = {3.0};
  const std::vector<std::uint8_t> bytes = {7};
  const auto build = [&] {
    safetensors_writer writer;
    writer.add("h", dtype::f16, {3}, halves.data(), 6);
    writer.add("b", dtype::u8, {1}, bytes.data(), 1);
    writer.add_f32("f", {2}, floats.data());
    writer.add("d", dtype::f64, {1}, doubles.data(), 8);
    writer.set_metadata("z", "last");
    writer.set_metadata("a", "first");
    return writer;
  };
  const std::vector<std::byte> image = build().to_bytes();
  CHECK(build().to_bytes() == image);

  std::uint64_t header_length = 0;
  std::memcpy(&header_length, image.data(), 8);
  CHECK(header_length % 8 == 0);
  const std::string header(reinterpret_cast<const char*>(image.data()) + 8, header_length);
  // __metadata__ first (keys sorted), then the tensors in data order: 8-, 4-, 2-, 1-byte types,
  // insertion order within a size.
  CHECK(header.rfind("{\"__metadata__\":{\"a\":\"first\",\"z\":\"last\"},"
                     "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                     "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                     "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                     "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[22,23]}}",
                     0) == 0);
  CHECK(header.find_first_not_of(' ', header.find_last_of('}') + 1) == std::string::npos);

  const std::string path = io_test::scratch_path("deterministic.safetensors");
  build().write(path);
  CHECK(io_test::read_file(path) == image);
  const safetensors_file file = safetensors_file::open(path);
  for (const reparam::io::tensor_info& info : file.tensors()) {
    const auto address = reinterpret_cast<std::uintptr_t>(file.bytes(info.name));
    CHECK(address % reparam::io::dtype_size(info.type) == 0);
  }
  CHECK(file.data_f32("f")[1] == 2.f);
}

TEST_CASE("safetensors_writer with nothing added writes a valid empty file", "[io][writer]") {
  const std::string path = io_test::scratch_path("empty.safetensors");
  safetensors_writer().write(path);
  const std::vector<std::byte> image = io_test::read_file(path);
  REQUIRE(image.size() == 16);
  CHECK(std::string(reinterpret_cast<const char*>(image.data()) + 8, 8) == "{}      ");
  const safetensors_file file = safetensors_file::open(path);
  CHECK(file.tensors().empty());
  CHECK(file.metadata().empty());
}

TEST_CASE("safetensors_writer replaces an existing file", "[io][writer]") {
  const std::string path = io_test::scratch_path("replace.safetensors");
  io_test::write_file(path, io_test::make_image("old", 0));
  const float value = 5.f;
  safetensors_writer writer;
  writer.add_f32("x", {}, &value);
  writer.write(path);
  CHECK(safetensors_file::open(path).data_f32("x")[0] == 5.f);
  CHECK_FALSE(has_temporary_for(REPARAM_TEST_BINARY_DIR, "io_test_replace.safetensors"));
}

TEST_CASE("safetensors_writer into a missing directory throws and leaves nothing", "[io][writer]") {
  const std::string directory = io_test::scratch_path("no_such_directory");
  const std::string path = directory + "/model.safetensors";
  safetensors_writer writer;
  const float value = 1.f;
  writer.add_f32("x", {1}, &value);
  REQUIRE_THROWS_AS(writer.write(path), reparam::io_error);
  REQUIRE_THROWS_WITH(writer.write(path), Catch::Contains("safetensors_writer::write") &&
                                              Catch::Contains("cannot create temporary file") &&
                                              Catch::Contains(path) &&
                                              Catch::Contains("No such file or directory"));
  struct stat status {};
  CHECK(::stat(directory.c_str(), &status) != 0);
}

TEST_CASE("safetensors_writer leaves the existing file untouched when writing fails",
          "[io][writer]") {
  const std::string base = "io_test_untouched.safetensors";
  const std::string path = io_test::scratch_path("untouched.safetensors");
  const std::vector<std::byte> original = io_test::make_image("{}      ", 0);
  io_test::write_file(path, original);
  std::vector<float> big(4096, 1.f);
  safetensors_writer writer;
  writer.add_f32("big", {4096}, big.data());

  std::string message;
  {
    const file_size_limit limit(1024);  // the 16 KiB tensor cannot be written
    try {
      writer.write(path);
    } catch (const reparam::io_error& error) {
      message = error.what();
    }
  }
  CAPTURE(message);
  CHECK_THAT(message, Catch::Contains("safetensors_writer::write: writing") &&
                          Catch::Contains(path) && Catch::Contains("File too large") &&
                          Catch::Contains("was not modified"));
  CHECK(io_test::read_file(path) == original);
  CHECK_FALSE(has_temporary_for(REPARAM_TEST_BINARY_DIR, base));
}

TEST_CASE("safetensors_writer removes its temporary when the final rename fails", "[io][writer]") {
  const std::string path = io_test::scratch_path("a_directory.safetensors");
  ::mkdir(path.c_str(), 0755);  // renaming a file over a directory fails (EISDIR)
  safetensors_writer writer;
  const float value = 1.f;
  writer.add_f32("x", {1}, &value);
  REQUIRE_THROWS_AS(writer.write(path), reparam::io_error);
  REQUIRE_THROWS_WITH(writer.write(path), Catch::Contains("renaming") && Catch::Contains(path));
  struct stat status {};
  REQUIRE(::stat(path.c_str(), &status) == 0);
  CHECK(S_ISDIR(status.st_mode));
  CHECK_FALSE(has_temporary_for(REPARAM_TEST_BINARY_DIR, "io_test_a_directory.safetensors"));
}

TEST_CASE("safetensors_writer rejects bad names, shapes and sizes", "[io][writer]") {
  safetensors_writer writer;
  const std::vector<float> values(6, 0.f);
  writer.add_f32("taken", {6}, values.data());
  const auto add = [&](std::string name, std::vector<reparam::index> shape, std::size_t bytes) {
    writer.add(std::move(name), dtype::f32, std::move(shape), values.data(), bytes);
  };
  using Catch::Contains;
  REQUIRE_THROWS_AS(add("", {6}, 24), reparam::error);
  REQUIRE_THROWS_WITH(add("", {6}, 24),
                      Contains("safetensors_writer::add") && Contains("tensor name is empty"));
  REQUIRE_THROWS_WITH(add("__metadata__", {6}, 24), Contains("reserved"));
  REQUIRE_THROWS_WITH(add("taken", {6}, 24), Contains("'taken' was already added"));
  REQUIRE_THROWS_WITH(add("bad\xff", {6}, 24), Contains("not valid UTF-8"));
  REQUIRE_THROWS_WITH(add("x", {2, 3}, 20), Contains("size_bytes 20 does not match shape [2, 3]") &&
                                                Contains("24 bytes"));
  REQUIRE_THROWS_WITH(add("x", {-2, 3}, 24), Contains("dim 0 of shape [-2, 3] is negative"));
  REQUIRE_THROWS_WITH(add("x", {1LL << 40, 1LL << 40}, 24), Contains("overflow"));
  REQUIRE_THROWS_WITH(writer.add("x", dtype::f32, {6}, nullptr, 24), Contains("data is null"));
  REQUIRE_THROWS_WITH(writer.add("x", static_cast<dtype>(99), {6}, values.data(), 24),
                      Contains("dtype value 99 is not a dtype"));
  REQUIRE_THROWS_WITH(writer.add_f32("x", {-1}, values.data()), Contains("is negative"));
  REQUIRE_THROWS_AS(writer.set_metadata("k", "\xc0\x80"), reparam::error);  // overlong NUL
  REQUIRE_THROWS_WITH(writer.set_metadata("\xed\xa0\x80", "v"), Contains("not valid UTF-8"));
  CHECK(writer.size() == 1);  // nothing half-added
}

TEST_CASE("UTF-8 validation agrees with nlohmann::json's parser", "[io][writer]") {
  using reparam::io::detail::is_valid_utf8;
  CHECK(is_valid_utf8(""));
  CHECK(is_valid_utf8("model.layers.0.weight"));
  CHECK(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf"));  // é € 😀 U+10FFFF
  CHECK_FALSE(is_valid_utf8("\xc0\xaf"));                                        // overlong
  CHECK_FALSE(is_valid_utf8("\xe0\x80\xaf"));                                    // overlong
  CHECK_FALSE(is_valid_utf8("\xf0\x80\x80\xaf"));                                // overlong
  CHECK_FALSE(is_valid_utf8("\xed\xb0\x80"));                                    // surrogate
  CHECK_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));                                // above U+10FFFF
  CHECK_FALSE(is_valid_utf8("\xe2\x82"));                                        // truncated
  CHECK_FALSE(is_valid_utf8("\x80"));  // stray continuation
  // Random byte strings (no control characters, quotes or backslashes, which JSON treats
  // specially): valid exactly when nlohmann accepts them as a JSON string.
  std::mt19937 generator(Catch::rngSeed());
  CAPTURE(Catch::rngSeed());
  std::size_t disagreements = 0;
  std::size_t valid_count = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::string text;
    const auto length = generator() % 6;
    for (unsigned i = 0; i < length; ++i) {
      // Bias towards the bytes that matter: leads, continuations and ASCII.
      static constexpr unsigned char alphabet[] = {'a',  0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
                                                   0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5};
      text += static_cast<char>(alphabet[generator() % sizeof alphabet]);
    }
    const std::string quoted = "\"" + text + "\"";
    const bool json_accepts = !nlohmann::json::parse(quoted, nullptr, false).is_discarded();
    disagreements += json_accepts != is_valid_utf8(text);
    valid_count += json_accepts;
  }
  CAPTURE(valid_count);
  REQUIRE(disagreements == 0);
  CHECK(valid_count > 1000);  // the comparison saw both outcomes
}
