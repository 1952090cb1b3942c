// SPDX-License-Identifier: Apache-2.0
// Binary-coded (shift-add) weights in safetensors files: save and load
// reparam::shiftadd::binary_coded_matrix under a documented tensor naming scheme with a format
// version, so that a quantized model can be written, reloaded and run. The loader validates every
// field of a possibly hostile file and reports problems as reparam::io_error.
#ifndef REPARAM_IO_SHIFTADD_HPP
#define REPARAM_IO_SHIFTADD_HPP

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/io/safetensors.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::io {

// Naming scheme, format "bcq/1". A matrix saved under the prefix P (e.g. "layers.0.wq") is:
//
// | name                   | kind     | dtype | shape                                      |
// |------------------------|----------|-------|--------------------------------------------|
// | reparam.shiftadd.format| metadata |       | "bcq/1" (once per file)                    |
// | P.bcq                  | metadata |       | JSON object, see below                     |
// | P.planes               | tensor   | U32   | [bits, rows, words_per_row]                |
// | P.scales               | tensor   | F32   | [scale_major, groups, bits]                |
// | P.offsets              | tensor   | F32   | [scale_major, groups]   (only if offsets)  |
// | P.apot                 | tensor   | I8    | [scale_major, groups, bits, terms, 2]      |
// |                        |          |       | (only if apot_terms > 0; (sign, exponent)) |
//
// P.bcq = {"rows": R, "cols": C, "bits": q, "group_size": G, "axis": "rows" | "columns",
//          "apot_terms": K, "has_offsets": true | false}, G the resolved group size (>= 1).
// words_per_row = ceil(C / 32); scale_major = R (axis rows) or C (axis columns); groups = C / G
// (axis rows) or R / G (axis columns). The arrays are binary_coded_matrix's own, byte for byte
// (little-endian), so a round trip is exact. The loader requires: the version string; a complete
// P.bcq with values in range (1 <= bits <= 8, 0 <= K <= 8, G dividing the grouped dimension);
// every tensor present (and no offsets/apot tensor the options do not call for) with exactly the
// dtype and shape above; finite scales and offsets; zero padding bits past column C in every
// last plane word; APoT signs in {-1, 0, +1} and, for every scale, sum_k sign_k * 2^exponent_k
// (computed in double) equal to the stored float scale.

/// The metadata key holding the format version, and the version this code reads and writes.
inline constexpr std::string_view shiftadd_format_key = "reparam.shiftadd.format";
inline constexpr std::string_view shiftadd_format_version = "bcq/1";

namespace detail {

/// Suffix of the per-matrix metadata key ("<prefix>.bcq").
inline constexpr std::string_view bcq_metadata_suffix = ".bcq";

/// Largest rows/cols accepted from a file: bounds every size computed from metadata so that no
/// product overflows before it is compared with the tensors actually present in the file.
inline constexpr std::int64_t max_bcq_dim = std::int64_t{1} << 40;

/// Whether `key` ends in ".bcq" (and has something before it).
inline bool is_bcq_metadata_key(std::string_view key) noexcept {
  return key.size() > bcq_metadata_suffix.size() &&
         key.substr(key.size() - bcq_metadata_suffix.size()) == bcq_metadata_suffix;
}

/// Whether `part` is the suffix of one of a matrix's tensors.
inline bool is_bcq_tensor_part(std::string_view part) noexcept {
  return part == "planes" || part == "scales" || part == "offsets" || part == "apot";
}

inline const char* axis_name(shiftadd::scale_axis axis) noexcept {
  return axis == shiftadd::scale_axis::rows ? "rows" : "columns";
}

/// The P.bcq metadata value of `m`.
inline std::string bcq_metadata(const shiftadd::binary_coded_matrix& m) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["rows"] = m.rows();
  j["cols"] = m.cols();
  j["bits"] = m.bits();
  j["group_size"] = m.group_size();
  j["axis"] = axis_name(m.axis());
  j["apot_terms"] = m.apot_terms();
  j["has_offsets"] = m.has_offsets();
  return j.dump();
}

/// Reads and validates one matrix; every failure names the function, file, prefix and values.
class bcq_loader {
 public:
  bcq_loader(const safetensors_file& file, const std::string& prefix, const char* function)
      : file_(file), prefix_(prefix), function_(function) {}

  shiftadd::binary_coded_matrix load() const {
    check_version(file_, function_);
    const shiftadd::bcq_shape shape = read_shape();
    const index grouped = shape.axis == shiftadd::scale_axis::rows ? shape.cols : shape.rows;
    const index scale_major = shape.axis == shiftadd::scale_axis::rows ? shape.rows : shape.cols;
    const index groups = grouped / shape.group_size;
    const index words = (shape.cols + 31) / 32;

    // Shapes first: after these checks every array size below is the size of a tensor that is
    // present in the file, so the allocation is bounded by the file.
    expect_tensor("planes", dtype::u32, {shape.bits, shape.rows, words});
    expect_tensor("scales", dtype::f32, {scale_major, groups, shape.bits});
    expect_optional_tensor("offsets", shape.has_offsets, dtype::f32, {scale_major, groups});
    expect_optional_tensor("apot", shape.apot_terms > 0, dtype::i8,
                           {scale_major, groups, shape.bits, shape.apot_terms, 2});

    shiftadd::binary_coded_matrix m(shape);
    copy_tensor("planes", m.planes().data(), m.planes().size() * sizeof(std::uint32_t));
    copy_tensor("scales", m.scales().data(), m.scales().size() * sizeof(float));
    check_finite_values("scales", m.scales());
    if (shape.has_offsets) {
      copy_tensor("offsets", m.offsets().data(), m.offsets().size() * sizeof(float));
      check_finite_values("offsets", m.offsets());
    }
    if (shape.apot_terms > 0) {
      copy_tensor("apot", m.apot().data(), m.apot().size() * sizeof(shiftadd::apot_term));
      check_apot(m);
    }
    check_padding(m);
    return m;
  }

  static void check_version(const safetensors_file& file, const char* function) {
    const auto& metadata = file.metadata();
    const auto found = metadata.find(std::string(shiftadd_format_key));
    if (found == metadata.end()) {
      raise_io_error(function, "'", file.path(), "': no metadata key '", shiftadd_format_key,
                     "' (not a reparam binary-coded weight file)");
    }
    if (found->second != shiftadd_format_version) {
      raise_io_error(function, "'", file.path(), "': metadata '", shiftadd_format_key, "' is ",
                     excerpt(found->second), " but this reader supports '", shiftadd_format_version,
                     "'");
    }
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    raise_io_error(function_, "'", file_.path(), "': matrix ", excerpt(prefix_), ": ", parts...);
  }

  std::string tensor_name(const char* part) const { return prefix_ + "." + part; }

  std::int64_t read_int(const nlohmann::json& j, const char* key, std::int64_t lo,
                        std::int64_t hi) const {
    const auto found = j.find(key);
    if (found == j.end()) {
      fail("metadata '", prefix_, bcq_metadata_suffix, "' has no \"", key, "\"");
    }
    if (!found->is_number_integer()) {
      fail("metadata \"", key, "\" is ", found->dump(), ", not an integer");
    }
    // Unsigned values above hi (including those beyond int64) are rejected before conversion.
    const bool is_in_range =
        found->is_number_unsigned()
            ? found->get<std::uint64_t>() <= static_cast<std::uint64_t>(hi) &&
                  static_cast<std::int64_t>(found->get<std::uint64_t>()) >= lo
            : found->get<std::int64_t>() >= lo && found->get<std::int64_t>() <= hi;
    if (!is_in_range) {
      fail("metadata \"", key, "\" is ", found->dump(), ", outside [", lo, ", ", hi, "]");
    }
    return found->get<std::int64_t>();
  }

  shiftadd::bcq_shape read_shape() const {
    const std::string key = prefix_ + std::string(bcq_metadata_suffix);
    const auto& metadata = file_.metadata();
    const auto found = metadata.find(key);
    if (found == metadata.end()) {
      fail("no metadata key ", excerpt(key), " (the file has ", metadata.size(),
           " metadata keys and ", file_.tensors().size(), " tensors)");
    }
    const nlohmann::json j = nlohmann::json::parse(found->second, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      fail("metadata ", excerpt(key), " is not a JSON object: ", excerpt(found->second));
    }
    for (const auto& item : j.items()) {
      const std::string& name = item.key();
      if (name != "rows" && name != "cols" && name != "bits" && name != "group_size" &&
          name != "axis" && name != "apot_terms" && name != "has_offsets") {
        fail("metadata ", excerpt(key), " has unknown field ", excerpt(name));
      }
    }
    shiftadd::bcq_shape shape;
    shape.rows = read_int(j, "rows", 1, max_bcq_dim);
    shape.cols = read_int(j, "cols", 1, max_bcq_dim);
    shape.bits = static_cast<int>(read_int(j, "bits", 1, shiftadd::max_bits));
    shape.apot_terms = static_cast<int>(read_int(j, "apot_terms", 0, 8));
    const auto axis = j.find("axis");
    if (axis == j.end() || !axis->is_string() || (*axis != "rows" && *axis != "columns")) {
      fail("metadata \"axis\" is ", axis == j.end() ? std::string("missing") : axis->dump(),
           R"(; expected "rows" or "columns")");
    }
    shape.axis = *axis == "rows" ? shiftadd::scale_axis::rows : shiftadd::scale_axis::columns;
    const index grouped = shape.axis == shiftadd::scale_axis::rows ? shape.cols : shape.rows;
    shape.group_size = read_int(j, "group_size", 1, grouped);
    if (grouped % shape.group_size != 0) {
      fail("metadata \"group_size\" ", shape.group_size, " does not divide ",
           shape.axis == shiftadd::scale_axis::rows ? "cols " : "rows ", grouped);
    }
    const auto offsets = j.find("has_offsets");
    if (offsets == j.end() || !offsets->is_boolean()) {
      fail("metadata \"has_offsets\" is ",
           offsets == j.end() ? std::string("missing") : offsets->dump(), "; expected a boolean");
    }
    shape.has_offsets = offsets->get<bool>();
    return shape;
  }

  void expect_tensor(const char* part, dtype type, const std::vector<index>& shape) const {
    const std::string name = tensor_name(part);
    if (!file_.contains(name)) {
      fail("tensor ", excerpt(name), " is missing");
    }
    const tensor_info& info = file_.info(name);
    if (info.type != type) {
      fail("tensor ", excerpt(name), " has dtype ", dtype_name(info.type), "; expected ",
           dtype_name(type));
    }
    if (info.shape != shape) {
      fail("tensor ", excerpt(name), " has shape ", format_shape(info.shape), " but ",
           excerpt(prefix_ + std::string(bcq_metadata_suffix)), " implies ", format_shape(shape));
    }
  }

  void expect_optional_tensor(const char* part, bool is_expected, dtype type,
                              const std::vector<index>& shape) const {
    if (is_expected) {
      expect_tensor(part, type, shape);
    } else if (file_.contains(tensor_name(part))) {
      fail("tensor ", excerpt(tensor_name(part)), " is present but ",
           excerpt(prefix_ + std::string(bcq_metadata_suffix)), " does not call for it");
    }
  }

  void copy_tensor(const char* part, void* out, std::size_t bytes) const {
    const std::string name = tensor_name(part);
    if (bytes > 0) {
      std::memcpy(out, file_.bytes(name), bytes);
    }
  }

  void check_finite_values(const char* part, const std::vector<float>& values) const {
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        fail("tensor ", excerpt(tensor_name(part)), " element ", i, " is ", values[i],
             " (scales and offsets must be finite)");
      }
    }
  }

  void check_apot(const shiftadd::binary_coded_matrix& m) const {
    const int terms = m.apot_terms();
    for (index major = 0; major < m.scale_major(); ++major) {
      for (index group = 0; group < m.groups(); ++group) {
        const float* scales = m.scales_of(major, group);
        for (int plane = 0; plane < m.bits(); ++plane) {
          const shiftadd::apot_term* term = m.apot_of(major, group, plane);
          double sum = 0.0;
          for (int k = 0; k < terms; ++k) {
            if (term[k].sign < -1 || term[k].sign > 1) {
              fail("tensor ", excerpt(tensor_name("apot")), " [", major, ", ", group, ", ", plane,
                   ", ", k, "] has sign ", int{term[k].sign}, "; expected -1, 0 or +1");
            }
            sum += term[k].sign * std::ldexp(1.0, term[k].exponent);
          }
          if (sum != static_cast<double>(scales[plane])) {
            fail("tensor ", excerpt(tensor_name("apot")), " [", major, ", ", group, ", ", plane,
                 "] sums to ", sum, " but the scale is ", scales[plane],
                 " (APoT terms must add up to the float scale exactly)");
          }
        }
      }
    }
  }

  void check_padding(const shiftadd::binary_coded_matrix& m) const {
    const int used = static_cast<int>(m.cols() % 32);
    if (used == 0) {
      return;
    }
    const std::uint32_t padding = ~((std::uint32_t{1} << used) - 1u);
    for (int plane = 0; plane < m.bits(); ++plane) {
      for (index row = 0; row < m.rows(); ++row) {
        const std::uint32_t word = m.plane_row(plane, row)[m.words_per_row() - 1];
        if ((word & padding) != 0) {
          fail("tensor ", excerpt(tensor_name("planes")), " [", plane, ", ", row, ", ",
               m.words_per_row() - 1, "] = ", word, " has padding bits set past column ", m.cols(),
               " (must be zero)");
        }
      }
    }
  }

  const safetensors_file& file_;
  const std::string& prefix_;
  const char* function_;
};

}  // namespace detail

/// Adds `m` to `writer` under `name_prefix` (tensors "<prefix>.planes", ".scales", ".offsets",
/// ".apot" and metadata "<prefix>.bcq"; see the table above) and sets the file's format version.
/// Throws reparam::error if the prefix is empty or its tensors were already added, or if `m` is
/// empty. Allocates copies of the arrays (the writer owns them). Not thread safe (the writer).
inline void save_binary_coded(safetensors_writer& writer, const std::string& name_prefix,
                              const shiftadd::binary_coded_matrix& m) {
  constexpr const char* function = "io::save_binary_coded";
  reparam::detail::check(!name_prefix.empty(), function, "name_prefix is empty");
  reparam::detail::check(m.rows() >= 1 && m.cols() >= 1, function, "matrix ",
                         detail::excerpt(name_prefix), " is empty (", m.rows(), "x", m.cols(), ")");
  const index groups = m.groups();
  const index major = m.scale_major();
  writer.add(name_prefix + ".planes", dtype::u32, {m.bits(), m.rows(), m.words_per_row()},
             m.planes().data(), m.planes().size() * sizeof(std::uint32_t));
  writer.add(name_prefix + ".scales", dtype::f32, {major, groups, m.bits()}, m.scales().data(),
             m.scales().size() * sizeof(float));
  if (m.has_offsets()) {
    writer.add(name_prefix + ".offsets", dtype::f32, {major, groups}, m.offsets().data(),
               m.offsets().size() * sizeof(float));
  }
  if (m.apot_terms() > 0) {
    writer.add(name_prefix + ".apot", dtype::i8, {major, groups, m.bits(), m.apot_terms(), 2},
               m.apot().data(), m.apot().size() * sizeof(shiftadd::apot_term));
  }
  writer.set_metadata(std::string(shiftadd_format_key), std::string(shiftadd_format_version));
  writer.set_metadata(name_prefix + std::string(detail::bcq_metadata_suffix),
                      detail::bcq_metadata(m));
}

/// Loads the matrix saved under `name_prefix`, validating everything listed with the naming
/// scheme above. Throws reparam::io_error naming the function, the file, the tensor or metadata
/// key and the offending values. Allocates the matrix (bounded by the tensors in the file).
/// O(size of the matrix). Thread safe (the file is only read).
inline shiftadd::binary_coded_matrix load_binary_coded(const safetensors_file& file,
                                                       const std::string& name_prefix) {
  return detail::bcq_loader(file, name_prefix, "io::load_binary_coded").load();
}

/// The prefixes of every binary-coded matrix in `file` (metadata keys "<prefix>.bcq"), sorted.
/// Throws reparam::io_error if the file has no (or another) format version. Allocates.
inline std::vector<std::string> binary_coded_names(const safetensors_file& file) {
  detail::bcq_loader::check_version(file, "io::binary_coded_names");
  std::vector<std::string> names;
  for (const auto& entry : file.metadata()) {
    const std::string& key = entry.first;
    if (detail::is_bcq_metadata_key(key)) {
      names.push_back(key.substr(0, key.size() - detail::bcq_metadata_suffix.size()));
    }
  }
  return names;
}

/// Writes every matrix of `matrices` under its name as prefix, plus `metadata` (free-form
/// strings, e.g. the model and quantizer settings), to `path`, atomically (see
/// safetensors_writer::write). Throws reparam::error on an empty name or a metadata key that
/// the format reserves (the version key, or any key ending in ".bcq"); io_error if writing
/// fails (then `path` is untouched). Allocates a copy of the matrices.
inline void write_binary_coded_file(
    const std::string& path, const std::map<std::string, shiftadd::binary_coded_matrix>& matrices,
    const std::map<std::string, std::string>& metadata = {}) {
  constexpr const char* function = "io::write_binary_coded_file";
  safetensors_writer writer;
  for (const auto& [key, value] : metadata) {
    const bool is_reserved = key == shiftadd_format_key || detail::is_bcq_metadata_key(key);
    reparam::detail::check(!is_reserved, function, "metadata key ", detail::excerpt(key),
                           " is reserved by the binary-coded format");
    writer.set_metadata(key, value);
  }
  for (const auto& [name, m] : matrices) {
    save_binary_coded(writer, name, m);
  }
  writer.set_metadata(std::string(shiftadd_format_key), std::string(shiftadd_format_version));
  writer.write(path);
}

/// Reads every matrix of a file written by write_binary_coded_file, keyed by name, and (if
/// `metadata` is given) the free-form metadata (without the format's own keys). Throws
/// reparam::io_error on anything load_binary_coded rejects, and on tensors that belong to no
/// matrix. Allocates; O(file size).
inline std::map<std::string, shiftadd::binary_coded_matrix> read_binary_coded_file(
    const std::string& path, std::map<std::string, std::string>* metadata = nullptr) {
  constexpr const char* function = "io::read_binary_coded_file";
  const safetensors_file file = safetensors_file::open(path);
  std::map<std::string, shiftadd::binary_coded_matrix> out;
  std::size_t tensors = 0;
  for (const std::string& name : binary_coded_names(file)) {
    shiftadd::binary_coded_matrix m = detail::bcq_loader(file, name, function).load();
    tensors += 2u + (m.has_offsets() ? 1u : 0u) + (m.apot_terms() > 0 ? 1u : 0u);
    out.emplace(name, std::move(m));
  }
  if (tensors != file.tensors().size()) {
    for (const tensor_info& info : file.tensors()) {
      const std::size_t dot = info.name.rfind('.');
      const bool is_claimed =
          dot != std::string::npos && out.count(info.name.substr(0, dot)) != 0 &&
          detail::is_bcq_tensor_part(std::string_view(info.name).substr(dot + 1));
      reparam::detail::check_io(is_claimed, function, "'", path, "': tensor ",
                                detail::excerpt(info.name), " belongs to no binary-coded matrix");
    }
  }
  if (metadata != nullptr) {
    metadata->clear();
    for (const auto& [key, value] : file.metadata()) {
      if (key != shiftadd_format_key && !detail::is_bcq_metadata_key(key)) {
        metadata->emplace(key, value);
      }
    }
  }
  return out;
}

}  // namespace reparam::io

#endif  // REPARAM_IO_SHIFTADD_HPP
