// SPDX-License-Identifier: Apache-2.0
// safetensors checkpoints in and out: a memory-mapped reader that validates the whole file when it
// opens and then hands out zero-copy F32 views or float/int32 copies, and an atomic writer.
// Used by the model loaders and examples; every check is hostile-file safe.
#ifndef REPARAM_IO_SAFETENSORS_HPP
#define REPARAM_IO_SAFETENSORS_HPP

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/half.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/io/detail/posix_file.hpp>
#include <reparam/io/detail/safetensors_header.hpp>
#include <reparam/io/detail/utf8.hpp>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "reparam::io reads little-endian data in place: big-endian hosts are unsupported"
#endif

namespace reparam::io {

// File layout (the safetensors format; all integers little-endian):
//
// | file offset | bytes | content                                                       |
// |-------------|-------|---------------------------------------------------------------|
// | 0           | 8     | N, the header length (u64), at most 100'000'000               |
// | 8           | N     | JSON header, UTF-8; writers pad it with spaces to 8-byte size |
// | 8 + N       | D     | data section: tensors back to back, row-major, little-endian  |
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the data section, plus an optional "__metadata__" object of strings. Like the
// official Rust reader, reparam requires the tensors to tile the data section exactly: no
// overlap, no hole between tensors, no byte after the last one.

/// Element types of the safetensors format. Values are stable; new types are appended.
enum class dtype {
  f64,
  f32,
  f16,
  bf16,
  i64,
  i32,
  i16,
  i8,
  u64,
  u32,
  u16,
  u8,
  boolean,
  f8_e5m2,  // 1 sign, 5 exponent, 2 mantissa bits (the top byte of a binary16)
  f8_e4m3   // E4M3FN: 1 sign, 4 exponent, 3 mantissa bits, no infinities
};

namespace detail {

struct dtype_traits {
  dtype type;
  std::string_view name;  // as written in safetensors headers
  std::size_t size;       // bytes per element
};

inline constexpr dtype_traits dtype_table[] = {
    {dtype::f64, "F64", 8},      {dtype::f32, "F32", 4},         {dtype::f16, "F16", 2},
    {dtype::bf16, "BF16", 2},    {dtype::i64, "I64", 8},         {dtype::i32, "I32", 4},
    {dtype::i16, "I16", 2},      {dtype::i8, "I8", 1},           {dtype::u64, "U64", 8},
    {dtype::u32, "U32", 4},      {dtype::u16, "U16", 2},         {dtype::u8, "U8", 1},
    {dtype::boolean, "BOOL", 1}, {dtype::f8_e5m2, "F8_E5M2", 1}, {dtype::f8_e4m3, "F8_E4M3", 1}};

}  // namespace detail

/// Every dtype, in enum order.
inline constexpr auto all_dtypes = [] {
  std::array<dtype, std::size(detail::dtype_table)> types{};
  for (std::size_t i = 0; i < types.size(); ++i) {
    types[i] = detail::dtype_table[i].type;
  }
  return types;
}();

/// The name used in safetensors headers: "F64", "F32", "F16", "BF16", "I64", ..., "BOOL",
/// "F8_E5M2", "F8_E4M3"; "?" for a value outside the enum. No allocation; thread safe.
constexpr std::string_view dtype_name(dtype type) noexcept {
  for (const detail::dtype_traits& traits : detail::dtype_table) {
    if (traits.type == type) {
      return traits.name;
    }
  }
  return "?";
}

/// Bytes per element; 0 for a value outside the enum. No allocation; thread safe.
constexpr std::size_t dtype_size(dtype type) noexcept {
  for (const detail::dtype_traits& traits : detail::dtype_table) {
    if (traits.type == type) {
      return traits.size;
    }
  }
  return 0;
}

/// The dtype whose header name is `name` (case-sensitive), or nullopt. No allocation.
constexpr std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  for (const detail::dtype_traits& traits : detail::dtype_table) {
    if (traits.name == name) {
      return traits.type;
    }
  }
  return std::nullopt;
}

/// One tensor of a safetensors file, as its header describes it.
struct tensor_info {
  std::string name;
  io::dtype type = dtype::f32;
  std::vector<reparam::index> shape;  // row-major; empty for a scalar (rank 0)
  std::size_t data_begin = 0;         // byte offsets relative to the data section, as in the header
  std::size_t data_end = 0;

  /// Product of `shape` (1 for rank 0, 0 if any dim is 0). No allocation.
  reparam::index numel() const noexcept {
    reparam::index count = 1;
    for (const reparam::index dim : shape) {
      count *= dim;
    }
    return count;
  }

  /// data_end - data_begin == numel() * dtype_size(type).
  std::size_t size_bytes() const noexcept { return data_end - data_begin; }
};

namespace detail {

/// Product of `dims` (each in [0, int64 max]) in *count. False when the product of the non-zero
/// dims overflows int64: then no sub-product (such as [d0, product of the rest]) can overflow
/// either. No allocation.
template <class Dim>
bool checked_numel(const std::vector<Dim>& dims, reparam::index* count) noexcept {
  constexpr auto max_count = static_cast<std::uint64_t>(std::numeric_limits<reparam::index>::max());
  std::uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (const Dim dim : dims) {
    const auto value = static_cast<std::uint64_t>(dim);
    if (value == 0) {
      has_zero = true;
    } else if (nonzero_product > max_count / value) {
      return false;
    } else {
      nonzero_product *= value;
    }
  }
  *count = has_zero ? 0 : static_cast<reparam::index>(nonzero_product);
  return true;
}

/// The [rows, cols] matrix view of a tensor: [d0, product of the rest]; rank 1 -> [1, n];
/// rank 0 -> [1, 1]. Cannot overflow for a validated tensor (see checked_numel).
inline std::pair<reparam::index, reparam::index> matrix_shape(const tensor_info& info) noexcept {
  if (info.shape.empty()) {
    return {1, 1};
  }
  if (info.shape.size() == 1) {
    return {1, info.shape[0]};
  }
  reparam::index cols = 1;
  for (std::size_t i = 1; i < info.shape.size(); ++i) {
    cols *= info.shape[i];
  }
  return {info.shape[0], cols};
}

/// Calls visit(start, chunk, count) over `count` values of type Stored read from possibly
/// unaligned bytes, copied through an aligned stack buffer. No allocation.
template <class Stored, class Visit>
void for_each_chunk(const std::byte* source, reparam::index count, Visit visit) {
  constexpr reparam::index chunk_size = 1024;
  Stored chunk[chunk_size];
  for (reparam::index start = 0; start < count; start += chunk_size) {
    const reparam::index length = std::min(chunk_size, count - start);
    std::memcpy(chunk, source + static_cast<std::size_t>(start) * sizeof(Stored),
                static_cast<std::size_t>(length) * sizeof(Stored));
    visit(start, static_cast<const Stored*>(chunk), length);
  }
}

/// The validated content of a safetensors image.
struct parsed_safetensors {
  std::vector<tensor_info> tensors;  // sorted by (data_begin, data_end, name)
  std::map<std::string, std::string> metadata;
  std::size_t data_offset = 0;  // 8 + header length: where the data section starts
};

/// Validates a whole safetensors image of `size` bytes: length prefix, header, every entry, and
/// that the tensors tile the data section. Throws io_error "<function>: '<origin>': <problem>".
/// Allocates (the tensor list); O(header bytes + tensors * log(tensors)).
inline parsed_safetensors parse_safetensors(const std::byte* bytes, std::size_t size,
                                            const char* function, const std::string& origin) {
  // Message arguments are only built on failure: this runs once per tensor of a large header.
  const auto fail = [&](const auto&... parts) {
    raise_io_error(function, "'", origin, "': ", parts...);
  };
  if (size < 8) {
    fail("file is ", size, " bytes, too short for the 8-byte header length");
  }
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {  // little-endian u64
    header_length = (header_length << 8) | std::to_integer<std::uint64_t>(bytes[i]);
  }
  if (header_length > max_header_bytes) {
    fail("header length ", header_length, " exceeds the format's limit of ", max_header_bytes,
         " bytes");
  }
  if (header_length > size - 8) {
    fail("header length ", header_length, " runs past the end of the file (", size - 8,
         " bytes follow the length prefix)");
  }
  if (header_length == 0) {
    fail("header length is 0; expected a JSON object");
  }
  // Like the official reader: no leading whitespace or byte order mark.
  if (bytes[8] != std::byte{'{'}) {
    fail("header must be a JSON object starting with '{' (its first byte is ",
         std::to_integer<int>(bytes[8]), ")");
  }
  const auto header_size = static_cast<std::size_t>(header_length);
  const std::size_t data_offset = 8 + header_size;
  const std::size_t data_size = size - data_offset;
  const char* header_text = reinterpret_cast<const char*>(bytes + 8);
  // nlohmann::json takes a NUL byte for the end of its input and would ignore what follows; no
  // NUL can appear in valid JSON text (in strings it must be escaped), so reject it here.
  if (const void* nul = std::memchr(header_text, 0, header_size)) {
    fail("header contains a NUL byte at offset ", static_cast<const char*>(nul) - header_text,
         " (not valid JSON)");
  }
  raw_header raw;
  const std::string problem = parse_header_json(header_text, header_text + header_size, &raw);
  if (!problem.empty()) {
    fail(problem);
  }

  parsed_safetensors result;
  result.data_offset = data_offset;
  result.metadata = std::move(raw.metadata);
  result.tensors.reserve(raw.tensors.size());
  constexpr auto max_index = static_cast<std::uint64_t>(std::numeric_limits<reparam::index>::max());
  for (raw_tensor_entry& entry : raw.tensors) {
    const std::optional<dtype> type = dtype_from_name(entry.dtype);
    if (!type) {
      fail("tensor ", excerpt(entry.name), ": unknown dtype ", excerpt(entry.dtype, 20));
    }
    for (std::size_t i = 0; i < entry.shape.size(); ++i) {
      if (entry.shape[i] > max_index) {
        fail("tensor ", excerpt(entry.name), ": dim ", i, " of shape ", format_shape(entry.shape),
             " exceeds the int64 range");
      }
    }
    reparam::index numel = 0;
    if (!checked_numel(entry.shape, &numel)) {
      fail("tensor ", excerpt(entry.name), ": shape ", format_shape(entry.shape),
           " has more elements than int64 can count (overflow)");
    }
    const std::size_t element_size = dtype_size(*type);
    if (static_cast<std::uint64_t>(numel) > max_index / element_size) {
      fail("tensor ", excerpt(entry.name), ": shape ", format_shape(entry.shape), " of ",
           dtype_name(*type), " needs more bytes than int64 can count (overflow)");
    }
    const std::uint64_t needed = static_cast<std::uint64_t>(numel) * element_size;
    const std::uint64_t begin = entry.data_begin;
    const std::uint64_t end = entry.data_end;
    if (begin > end) {
      fail("tensor ", excerpt(entry.name), ": data_offsets [", begin, ", ", end,
           "] are reversed (begin > end)");
    }
    if (end - begin != needed) {
      fail("tensor ", excerpt(entry.name), ": data_offsets [", begin, ", ", end, "] hold ",
           end - begin, " bytes but shape ", format_shape(entry.shape), " of ", dtype_name(*type),
           " needs ", needed, " bytes");
    }
    if (end > data_size) {
      fail("tensor ", excerpt(entry.name), ": data_offsets [", begin, ", ", end,
           "] end beyond the data section, which has ", data_size, " bytes (truncated file?)");
    }
    tensor_info info;
    info.name = std::move(entry.name);
    info.type = *type;
    info.shape.assign(entry.shape.begin(), entry.shape.end());
    info.data_begin = static_cast<std::size_t>(begin);
    info.data_end = static_cast<std::size_t>(end);
    result.tensors.push_back(std::move(info));
  }

  std::vector<tensor_info>& tensors = result.tensors;
  std::sort(tensors.begin(), tensors.end(), [](const tensor_info& a, const tensor_info& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  std::size_t covered = 0;  // the data section [0, covered) belongs to the tensors seen so far
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const tensor_info& info = tensors[i];
    if (info.data_begin < covered) {  // then i > 0, and tensors[i - 1] ends at `covered`
      fail("tensor ", excerpt(info.name), " at [", info.data_begin, ", ", info.data_end,
           ") overlaps tensor ", excerpt(tensors[i - 1].name), " at [", tensors[i - 1].data_begin,
           ", ", covered, ")");
    }
    if (info.data_begin > covered) {
      fail("bytes [", covered, ", ", info.data_begin,
           ") of the data section belong to no tensor (holes are not allowed; next is tensor ",
           excerpt(info.name), ")");
    }
    covered = info.data_end;
  }
  if (covered != data_size) {
    fail("the data section has ", data_size, " bytes but the tensors cover ", covered, " (",
         data_size - covered, " trailing bytes; holes are not allowed)");
  }
  return result;
}

}  // namespace detail

/// A safetensors file, memory-mapped (PROT_READ, MAP_PRIVATE) and validated when opened.
/// Accessors only index: pointers and views stay valid while this object (or the one it is
/// moved into) lives. Move-only. All const member functions are safe to call concurrently.
/// POSIX only. As with any mmap, a file truncated by another process while mapped makes reads
/// fault (SIGBUS); reparam does not guard against concurrent modification.
class safetensors_file {
 public:
  /// Maps and validates `path` (see the layout above): header length <= 100 MB and inside the
  /// file, valid UTF-8 JSON object, every entry with exactly dtype/shape/data_offsets of the
  /// right types, known dtypes, non-negative integer dims whose product does not overflow,
  /// data_offsets matching the shape, and tensors tiling the data section exactly (no overlap,
  /// no hole, no trailing byte). Empty files are rejected; zero-size and rank-0 tensors are fine.
  /// Throws io_error naming the function, the path and the offending values (with strerror when
  /// the file cannot be opened). Allocates the tensor list; O(header size).
  static safetensors_file open(const std::string& path) {
    constexpr const char* function = "safetensors_file::open";
    safetensors_file file;
    file.path_ = path;
    file.mapping_ = detail::mapped_file::map_read_only(path, function);
    file.initialize(function);
    return file;
  }

  /// Validates a safetensors image held in memory, taking ownership of it, exactly as open()
  /// does for a file; `name` stands in for the path in messages and path(). For tests, fuzzing
  /// and data that did not come from a file. Throws io_error. Allocates.
  static safetensors_file from_buffer(std::vector<std::byte> bytes, std::string name = "<memory>") {
    safetensors_file file;
    file.path_ = std::move(name);
    file.buffer_ = std::move(bytes);
    file.initialize("safetensors_file::from_buffer");
    return file;
  }

  safetensors_file(safetensors_file&&) noexcept = default;
  safetensors_file& operator=(safetensors_file&&) noexcept = default;
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  ~safetensors_file() = default;

  /// The path given to open() (or the name given to from_buffer()).
  const std::string& path() const noexcept { return path_; }

  /// Every tensor, sorted by data_begin (ties: data_end, then name).
  const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }

  /// The "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Whether a tensor called `name` exists. No allocation; O(log tensors).
  bool contains(std::string_view name) const { return by_name_.find(name) != by_name_.end(); }

  /// The tensor called `name`; io_error naming the file and the tensor if there is none.
  const tensor_info& info(std::string_view name) const {
    return find(name, "safetensors_file::info");
  }

  /// Zero-copy pointer to the raw little-endian bytes of `name` (info(name).size_bytes() of them;
  /// possibly unaligned). io_error if missing. No allocation.
  const std::byte* bytes(std::string_view name) const {
    return tensor_bytes(find(name, "safetensors_file::bytes"));
  }

  /// Zero-copy pointer to an F32 tensor's numel() floats. io_error unless the dtype is F32 and
  /// the data is 4-byte aligned in memory (files from reparam's and the official writers are;
  /// for others use to_float). No allocation.
  const float* data_f32(std::string_view name) const {
    return f32_pointer(find(name, "safetensors_file::data_f32"), "safetensors_file::data_f32");
  }

  /// Zero-copy row-major view of an F32 tensor as [d0, product of the other dims]; rank 1 gives
  /// [1, n], rank 0 gives [1, 1]. Same errors as data_f32. No allocation.
  reparam::const_matrix_map<float> matrix_f32(std::string_view name) const {
    constexpr const char* function = "safetensors_file::matrix_f32";
    const tensor_info& info = find(name, function);
    const auto [rows, cols] = detail::matrix_shape(info);
    return reparam::row_major_map(f32_pointer(info, function), rows, cols);
  }

  /// A float copy of `name`: F32 copied, F16/BF16/F8 converted exactly, F64 rounded to nearest
  /// (beyond the float range: +-inf). Other dtypes: io_error. Allocates numel() floats.
  std::vector<float> to_float(std::string_view name) const {
    constexpr const char* function = "safetensors_file::to_float";
    const tensor_info& info = find(name, function);
    std::vector<float> values(static_cast<std::size_t>(info.numel()));
    convert_to_float(info, values.data(), function);
    return values;
  }

  /// A float copy of `name` shaped as matrix_f32 would view it ([d0, product of the rest]).
  /// Converts like to_float. Allocates.
  reparam::matrix<float> load_matrix(std::string_view name) const {
    constexpr const char* function = "safetensors_file::load_matrix";
    const tensor_info& info = find(name, function);
    const auto [rows, cols] = detail::matrix_shape(info);
    reparam::matrix<float> values(rows, cols);
    convert_to_float(info, values.data(), function);
    return values;
  }

  /// An int32 copy of `name`: I32 copied; I16/I8/U16/U8 widened; I64/U32/U64 converted after a
  /// range check (io_error naming the first element outside int32). Other dtypes (floats, BOOL):
  /// io_error. Allocates numel() ints.
  std::vector<std::int32_t> to_int32(std::string_view name) const {
    constexpr const char* function = "safetensors_file::to_int32";
    const tensor_info& info = find(name, function);
    std::vector<std::int32_t> values(static_cast<std::size_t>(info.numel()));
    convert_to_int32(info, values.data(), function);
    return values;
  }

 private:
  safetensors_file() = default;

  void initialize(const char* function) {
    detail::parsed_safetensors parsed =
        detail::parse_safetensors(file_bytes(), file_size(), function, path_);
    data_offset_ = parsed.data_offset;
    tensors_ = std::move(parsed.tensors);
    metadata_ = std::move(parsed.metadata);
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      by_name_.emplace(tensors_[i].name, i);  // names are unique: the parser rejects duplicates
    }
  }

  const std::byte* file_bytes() const noexcept {
    return mapping_.data() != nullptr ? mapping_.data() : buffer_.data();
  }
  std::size_t file_size() const noexcept {
    return mapping_.data() != nullptr ? mapping_.size() : buffer_.size();
  }
  const std::byte* tensor_bytes(const tensor_info& info) const noexcept {
    return file_bytes() + data_offset_ + info.data_begin;
  }

  template <class... Parts>
  [[noreturn]] void raise_for_tensor(const char* function, const tensor_info& info,
                                     const Parts&... parts) const {
    detail::raise_io_error(function, "'", path_, "': tensor ", detail::excerpt(info.name),
                           parts...);
  }

  const tensor_info& find(std::string_view name, const char* function) const {
    const auto found = by_name_.find(name);
    if (found == by_name_.end()) {
      detail::raise_io_error(function, "'", path_, "': no tensor named ", detail::excerpt(name),
                             " (the file has ", tensors_.size(), " tensors)");
    }
    return tensors_[found->second];
  }

  const float* f32_pointer(const tensor_info& info, const char* function) const {
    const std::byte* data = tensor_bytes(info);
    if (info.type != dtype::f32) {
      raise_for_tensor(function, info, " has dtype ", dtype_name(info.type),
                       ", not F32; use to_float or load_matrix to convert");
    }
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(float) != 0) {
      raise_for_tensor(function, info, " is not 4-byte aligned (data section at file offset ",
                       data_offset_, ", data_offsets begin ", info.data_begin,
                       "); use to_float or load_matrix");
    }
    return static_cast<const float*>(static_cast<const void*>(data));
  }

  void convert_to_float(const tensor_info& info, float* out, const char* function) const {
    const std::byte* source = tensor_bytes(info);
    const reparam::index count = info.numel();
    switch (info.type) {
      case dtype::f32:
        if (count > 0) {
          std::memcpy(out, source, info.size_bytes());
        }
        return;
      case dtype::f16:
        detail::for_each_chunk<std::uint16_t>(
            source, count,
            [out](reparam::index start, const std::uint16_t* chunk, reparam::index length) {
              f16_to_float_n(chunk, out + start, length);
            });
        return;
      case dtype::bf16:
        detail::for_each_chunk<std::uint16_t>(
            source, count,
            [out](reparam::index start, const std::uint16_t* chunk, reparam::index length) {
              bf16_to_float_n(chunk, out + start, length);
            });
        return;
      case dtype::f64:
        detail::for_each_chunk<double>(
            source, count, [out](reparam::index start, const double* chunk, reparam::index length) {
              for (reparam::index i = 0; i < length; ++i) {
                out[start + i] = static_cast<float>(chunk[i]);
              }
            });
        return;
      case dtype::f8_e4m3:
      case dtype::f8_e5m2: {
        const bool is_e4m3 = info.type == dtype::f8_e4m3;
        for (reparam::index i = 0; i < count; ++i) {
          const auto byte = std::to_integer<std::uint8_t>(source[i]);
          out[i] = is_e4m3 ? f8_e4m3_to_float(byte) : f8_e5m2_to_float(byte);
        }
        return;
      }
      default:
        raise_for_tensor(function, info, " has dtype ", dtype_name(info.type),
                         "; only F32, F16, BF16, F64 and F8 convert to float");
    }
  }

  template <class Stored>
  void narrow_to_int32(const tensor_info& info, std::int32_t* out, const char* function) const {
    detail::for_each_chunk<Stored>(
        tensor_bytes(info), info.numel(),
        [&](reparam::index start, const Stored* chunk, reparam::index length) {
          for (reparam::index i = 0; i < length; ++i) {
            const Stored value = chunk[i];
            bool fits = false;
            if constexpr (std::is_unsigned_v<Stored>) {
              fits = value <= static_cast<Stored>(std::numeric_limits<std::int32_t>::max());
            } else {
              fits = value >= std::numeric_limits<std::int32_t>::min() &&
                     value <= std::numeric_limits<std::int32_t>::max();
            }
            if (!fits) {
              raise_for_tensor(function, info, " (", dtype_name(info.type), ") element ", start + i,
                               " is ", value, ", outside the int32 range");
            }
            out[start + i] = static_cast<std::int32_t>(value);
          }
        });
  }

  template <class Stored>
  void widen_to_int32(const tensor_info& info, std::int32_t* out) const {
    detail::for_each_chunk<Stored>(
        tensor_bytes(info), info.numel(),
        [out](reparam::index start, const Stored* chunk, reparam::index length) {
          for (reparam::index i = 0; i < length; ++i) {
            out[start + i] = std::int32_t{chunk[i]};  // I8 is signed: sign extension intended
          }
        });
  }

  void convert_to_int32(const tensor_info& info, std::int32_t* out, const char* function) const {
    switch (info.type) {
      case dtype::i32:
        if (info.numel() > 0) {
          std::memcpy(out, tensor_bytes(info), info.size_bytes());
        }
        return;
      case dtype::i16:
        return widen_to_int32<std::int16_t>(info, out);
      case dtype::i8:
        return widen_to_int32<std::int8_t>(info, out);
      case dtype::u16:
        return widen_to_int32<std::uint16_t>(info, out);
      case dtype::u8:
        return widen_to_int32<std::uint8_t>(info, out);
      case dtype::i64:
        return narrow_to_int32<std::int64_t>(info, out, function);
      case dtype::u32:
        return narrow_to_int32<std::uint32_t>(info, out, function);
      case dtype::u64:
        return narrow_to_int32<std::uint64_t>(info, out, function);
      default:
        raise_for_tensor(function, info, " has dtype ", dtype_name(info.type),
                         "; only integer dtypes (I8..I64, U8..U64) convert to int32");
    }
  }

  std::string path_;
  detail::mapped_file mapping_;
  std::vector<std::byte> buffer_;  // from_buffer's image (empty for a mapped file)
  std::size_t data_offset_ = 0;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::size_t, std::less<>> by_name_;  // name -> index into tensors_
};

/// Collects tensors and metadata, then writes a safetensors file atomically. add() copies, so
/// the sources may go away. Layout: tensors are stored by decreasing dtype size (8, 4, 2, 1
/// bytes) and in insertion order within a size, so with the 8-byte padded header every tensor
/// is aligned to its element size (and data_f32 views of it are zero-copy); the header lists
/// "__metadata__" (if any) first, then the tensors in data order, each as
/// {"dtype", "shape", "data_offsets"}: byte-for-byte deterministic. Not thread safe (a writer is
/// built by one thread); write() and to_bytes() are const.
class safetensors_writer {
 public:
  /// Sets (or replaces) "__metadata__"[key] = value. reparam::error unless both are valid UTF-8.
  void set_metadata(std::string key, std::string value) {
    constexpr const char* function = "safetensors_writer::set_metadata";
    reparam::detail::check(detail::is_valid_utf8(key), function, "key ", detail::excerpt(key),
                           " is not valid UTF-8");
    reparam::detail::check(detail::is_valid_utf8(value), function, "value of key ",
                           detail::excerpt(key), " is not valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
  }

  /// Adds a copy of `size_bytes` bytes at `data` (little-endian, row-major) as tensor `name`.
  /// reparam::error if the name is empty, "__metadata__", not valid UTF-8 or already added, if a
  /// dim is negative or the element count overflows, if `type` is not a dtype, if size_bytes !=
  /// numel * dtype_size(type), or if data is null with size_bytes > 0. Allocates size_bytes.
  void add(std::string name, dtype type, std::vector<reparam::index> shape, const void* data,
           std::size_t size_bytes) {
    constexpr const char* function = "safetensors_writer::add";
    using reparam::detail::check;
    check(!name.empty(), function, "tensor name is empty");
    check(name != "__metadata__", function, "tensor name '__metadata__' is reserved for metadata");
    check(detail::is_valid_utf8(name), function, "tensor name ", detail::excerpt(name),
          " is not valid UTF-8");
    check(names_.count(name) == 0, function, "tensor ", detail::excerpt(name),
          " was already added");
    check(dtype_size(type) != 0, function, "tensor ", detail::excerpt(name), ": dtype value ",
          static_cast<int>(type), " is not a dtype");
    for (std::size_t i = 0; i < shape.size(); ++i) {
      check(shape[i] >= 0, function, "tensor ", detail::excerpt(name), ": dim ", i, " of shape ",
            detail::format_shape(shape), " is negative");
    }
    reparam::index numel = 0;
    const bool is_countable = detail::checked_numel(shape, &numel) &&
                              static_cast<std::size_t>(numel) <=
                                  std::numeric_limits<std::size_t>::max() / dtype_size(type);
    check(is_countable, function, "tensor ", detail::excerpt(name), ": shape ",
          detail::format_shape(shape), " has too many elements (overflow)");
    const std::size_t needed = static_cast<std::size_t>(numel) * dtype_size(type);
    check(size_bytes == needed, function, "tensor ", detail::excerpt(name), ": size_bytes ",
          size_bytes, " does not match shape ", detail::format_shape(shape), " of ",
          dtype_name(type), " (", needed, " bytes)");
    check(data != nullptr || size_bytes == 0, function, "tensor ", detail::excerpt(name),
          ": data is null");
    entry added;
    added.type = type;
    added.shape = std::move(shape);
    if (size_bytes > 0) {
      const auto* first = static_cast<const std::byte*>(data);
      added.bytes.assign(first, first + size_bytes);
    }
    names_.insert(name);
    added.name = std::move(name);
    entries_.push_back(std::move(added));
  }

  /// Adds numel(shape) floats at `data` as an F32 tensor. Same checks as add. Allocates.
  void add_f32(std::string name, std::vector<reparam::index> shape, const float* data) {
    reparam::index numel = 0;
    const bool is_valid_shape =
        std::all_of(shape.begin(), shape.end(), [](reparam::index dim) { return dim >= 0; }) &&
        detail::checked_numel(shape, &numel) &&
        static_cast<std::size_t>(numel) <= std::numeric_limits<std::size_t>::max() / sizeof(float);
    // For an invalid shape add() reports the actual problem before it looks at the size.
    add(std::move(name), dtype::f32, std::move(shape), data,
        is_valid_shape ? static_cast<std::size_t>(numel) * sizeof(float) : 0);
  }

  /// Adds a copy of a row-major matrix (or row block, or vector) as shape [rows, cols]: float ->
  /// F32, double -> F64. A column-major matrix or an unevaluated expression does not compile
  /// (no silent transpose or hidden temporary). Same checks as add. Allocates.
  template <class Derived>
  void add(std::string name, const Eigen::MatrixBase<Derived>& values) {
    reparam::detail::static_check_input<Derived>();
    using scalar_type = typename Derived::Scalar;
    const reparam::matrix<scalar_type> contiguous = values;  // packs strided blocks
    add(std::move(name), std::is_same_v<scalar_type, float> ? dtype::f32 : dtype::f64,
        {contiguous.rows(), contiguous.cols()}, contiguous.data(),
        static_cast<std::size_t>(contiguous.size()) * sizeof(scalar_type));
  }

  /// Number of tensors added so far.
  std::size_t size() const noexcept { return entries_.size(); }

  /// The complete file image (length prefix, padded header, data). Throws io_error if the header
  /// would exceed the format's 100 MB limit. Allocates the whole image.
  std::vector<std::byte> to_bytes() const {
    const std::string header = header_text("safetensors_writer::to_bytes");
    const std::vector<std::size_t> order = layout();
    std::size_t total = 8 + header.size();
    for (const std::size_t i : order) {
      total += entries_[i].bytes.size();
    }
    // Sized once and filled with memcpy (vector::insert trips GCC 12's -Warray-bounds at -O3).
    std::vector<std::byte> image(total);
    encode_length(header.size(), image.data());
    std::memcpy(image.data() + 8, header.data(), header.size());
    std::size_t offset = 8 + header.size();
    for (const std::size_t i : order) {
      const std::vector<std::byte>& bytes = entries_[i].bytes;
      if (!bytes.empty()) {
        std::memcpy(image.data() + offset, bytes.data(), bytes.size());
      }
      offset += bytes.size();
    }
    return image;
  }

  /// Writes the file atomically: "<path>.tmp.<pid>.<counter>" is created next to `path`
  /// (O_EXCL), written, fsynced and renamed over `path`; then the directory is fsynced (best
  /// effort). On any failure the temporary file is removed, a file already at `path` is left
  /// untouched, and io_error names the failing step, the paths and strerror. The new file gets
  /// mode 0666 minus umask (not the replaced file's mode); a symlink at `path` is replaced, not
  /// followed. Allocates the header only.
  void write(const std::string& path) const {
    constexpr const char* function = "safetensors_writer::write";
    const std::string header = header_text(function);
    int fd = -1;
    std::string temp_path;
    const int create_error = detail::create_unique_temp(path, &fd, &temp_path);
    if (create_error != 0) {
      detail::raise_io_error(function, "cannot create temporary file '", temp_path, "' for '", path,
                             "': ", detail::errno_message(create_error));
    }
    // Without exceptions raise() aborts and runs no destructor, so clean up before raising.
    const auto fail_step = [&](const char* step, int error_number) {
      if (fd >= 0) {
        ::close(fd);
      }
      ::unlink(temp_path.c_str());
      detail::raise_io_error(function, step, " '", temp_path,
                             "' failed: ", detail::errno_message(error_number), "; '", path,
                             "' was not modified");
    };
    std::array<std::byte, 8> prefix{};
    encode_length(header.size(), prefix.data());
    int error_number = detail::write_all(fd, prefix.data(), prefix.size());
    if (error_number == 0) {
      error_number = detail::write_all(fd, header.data(), header.size());
    }
    for (const std::size_t i : layout()) {
      if (error_number == 0) {
        error_number = detail::write_all(fd, entries_[i].bytes.data(), entries_[i].bytes.size());
      }
    }
    if (error_number != 0) {
      fail_step("writing", error_number);
    }
    if (::fsync(fd) != 0) {
      fail_step("fsync of", errno);
    }
    const int closed = ::close(fd);
    fd = -1;
    if (closed != 0) {
      fail_step("closing", errno);
    }
    if (::rename(temp_path.c_str(), path.c_str()) != 0) {
      fail_step("renaming", errno);
    }
    detail::sync_parent_directory(path);
  }

 private:
  struct entry {
    std::string name;
    dtype type = dtype::f32;
    std::vector<reparam::index> shape;
    std::vector<std::byte> bytes;
  };

  static void encode_length(std::size_t length, std::byte* out) noexcept {
    for (int i = 0; i < 8; ++i) {
      out[i] = static_cast<std::byte>((static_cast<std::uint64_t>(length) >> (8 * i)) & 0xffu);
    }
  }

  // Entry indices in data order: decreasing element size, insertion order within a size.
  std::vector<std::size_t> layout() const {
    std::vector<std::size_t> order(entries_.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
      order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(), [this](std::size_t a, std::size_t b) {
      return dtype_size(entries_[a].type) > dtype_size(entries_[b].type);
    });
    return order;
  }

  // The JSON header padded with spaces to a multiple of 8 bytes.
  std::string header_text(const char* function) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      header["__metadata__"] = metadata_;
    }
    std::size_t offset = 0;
    for (const std::size_t i : layout()) {
      const entry& tensor = entries_[i];
      nlohmann::ordered_json description = nlohmann::ordered_json::object();
      description["dtype"] = dtype_name(tensor.type);
      description["shape"] = tensor.shape;
      description["data_offsets"] = {offset, offset + tensor.bytes.size()};
      offset += tensor.bytes.size();
      header[tensor.name] = std::move(description);
    }
    std::string text = header.dump();  // names and metadata were checked to be valid UTF-8
    text.append((8 - text.size() % 8) % 8, ' ');
    if (text.size() > detail::max_header_bytes) {
      detail::raise_io_error(function, "the header would be ", text.size(),
                             " bytes, over the format's ", detail::max_header_bytes,
                             "-byte limit (", entries_.size(), " tensors)");
    }
    return text;
  }

  std::vector<entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::set<std::string, std::less<>> names_;
};

}  // namespace reparam::io

#endif  // REPARAM_IO_SAFETENSORS_HPP
