// SPDX-License-Identifier: Apache-2.0
// Writes the seed corpus and the token dictionary for safetensors_fuzz at build time (nothing
// binary is committed): small files of every dtype and edge case, and shrunken copies of the
// bundled real files' headers. Usage: make_seeds <data dir> <corpus dir> <dictionary file>.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <reparam/io/safetensors.hpp>

namespace {

using reparam::io::dtype;
using reparam::io::safetensors_writer;

void save(const std::string& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// A raw image with an arbitrary (unpadded) header.
std::vector<std::byte> raw_image(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> image;
  for (int i = 0; i < 8; ++i) {
    image.push_back(static_cast<std::byte>((header.size() >> (8 * i)) & 0xffu));
  }
  for (const char c : header) {
    image.push_back(static_cast<std::byte>(c));
  }
  image.resize(image.size() + data_bytes, std::byte{0x3c});
  return image;
}

// The real file's metadata and tensor names and dtypes, every dim cut to at most 3.
std::vector<std::byte> shrunken(const std::string& path) {
  const auto file = reparam::io::safetensors_file::open(path);
  safetensors_writer writer;
  for (const auto& [key, value] : file.metadata()) {
    writer.set_metadata(key, value);
  }
  for (const reparam::io::tensor_info& info : file.tensors()) {
    std::vector<reparam::index> shape = info.shape;
    for (reparam::index& dim : shape) {
      dim = std::min<reparam::index>(dim, 3);
    }
    reparam::index numel = 1;
    for (const reparam::index dim : shape) {
      numel *= dim;
    }
    const std::size_t size = static_cast<std::size_t>(numel) * reparam::io::dtype_size(info.type);
    writer.add(info.name, info.type, shape, file.bytes(info.name), size);
  }
  return writer.to_bytes();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <data dir> <corpus dir> <dictionary file>\n", argv[0]);
    return 2;
  }
  const std::string data_dir = std::string(argv[1]) + "/llama2c_stories260K/";
  const std::string corpus = argv[2];

  save(corpus + "/stories260K_small", shrunken(data_dir + "stories260K.safetensors"));
  save(corpus + "/ref_greedy_small", shrunken(data_dir + "stories260K_ref_greedy.safetensors"));

  safetensors_writer every_dtype;
  const std::vector<std::uint8_t> pattern = {0x00, 0x80, 0x7f, 0xff, 0x01, 0x7c, 0xc0, 0x3f,
                                             0x00, 0x00, 0x80, 0x7f, 0x01, 0x00, 0xfe, 0xff,
                                             0x3c, 0x00, 0x7c, 0x01, 0x80, 0x00, 0x00, 0x40};
  for (const dtype type : reparam::io::all_dtypes) {
    const std::size_t size = reparam::io::dtype_size(type);
    every_dtype.add(std::string(reparam::io::dtype_name(type)), type, {3}, pattern.data(),
                    3 * size);
  }
  every_dtype.set_metadata("format", "pt");
  save(corpus + "/every_dtype", every_dtype.to_bytes());

  safetensors_writer edge;
  const float scalar = -0.f;
  edge.add_f32("scalar", {}, &scalar);
  edge.add_f32("rows0", {0, 4}, nullptr);
  edge.add("empty_i8", dtype::i8, {2, 0, 5}, nullptr, 0);
  save(corpus + "/edge_shapes", edge.to_bytes());

  save(corpus + "/empty", safetensors_writer().to_bytes());
  save(corpus + "/unaligned",
       raw_image("{\"h\":{\"dtype\":\"F16\",\"shape\":[1,3],\"data_offsets\":[0,6]},"
                 "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[6,14]}}",
                 14));
  save(corpus + "/wide_ints",
       raw_image("{\"__metadata__\":{\"a\":\"b\"},\"q\":{\"dtype\":\"I64\",\"shape\":[2],"
                 "\"data_offsets\":[0,16]},\"u\":{\"dtype\":\"U32\",\"shape\":[1],"
                 "\"data_offsets\":[16,20]}}",
                 20));

  std::ofstream dictionary(argv[3], std::ios::trunc);
  for (const char* token : {"dtype", "shape", "data_offsets", "__metadata__"}) {
    dictionary << "\"\\\"" << token << "\\\"\"\n";
  }
  for (const dtype type : reparam::io::all_dtypes) {
    dictionary << "\"\\\"" << reparam::io::dtype_name(type) << "\\\"\"\n";
  }
  for (const char* token :
       {"{", "}", "[", "]", ":", ",", "-0", "-1", "0.5", "1e3", "null", "true",
        "18446744073709551615", "9223372036854775808", "4294967296", "\\\\u00e9"}) {
    dictionary << '"' << token << "\"\n";
  }
  return 0;
}
