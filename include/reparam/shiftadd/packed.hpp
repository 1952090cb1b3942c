// SPDX-License-Identifier: Apache-2.0
// Binary-coded weights repacked for the lookup-table kernels: sign bits regrouped into 4-bit
// table indices, tiles of 64 rows, the planes of each quad interleaved and the scales of each
// (tile, group) stored right after its signs, so a kernel reads one sequential stream
// (T-MAC, Wei et al. 2024, sec. 3.2 / 4.4). The byte layout is documented in
// kernels/bcq_lut_layout.hpp. Packing is done once at load time; unpack() gives back the
// canonical binary_coded_matrix exactly.
#ifndef REPARAM_SHIFTADD_PACKED_HPP
#define REPARAM_SHIFTADD_PACKED_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <reparam/core/error.hpp>
#include <reparam/core/half.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/workspace.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd {

namespace detail {

/// The `count` (1..4) sign bits of a plane row starting at column `col`, bit u = column col + u.
inline unsigned sign_bits(const std::uint32_t* words, index col, index count) noexcept {
  const auto shift = static_cast<unsigned>(col & 31);
  std::uint64_t window = words[col >> 5];
  if (shift + static_cast<unsigned>(count) > 32) {
    window |= static_cast<std::uint64_t>(words[(col >> 5) + 1]) << 32;
  }
  return static_cast<unsigned>(window >> shift) & ((1u << count) - 1u);
}

}  // namespace detail

/// How a packed matrix stores its scales and offsets.
///  - f32: as the canonical matrix (the LUT products equal the reference on it bit for bit).
///  - f16: IEEE binary16, rounded to nearest even once at packing (LUT-GEMM and T-MAC store fp16
///    scales too): 2 instead of 4 bytes per (row, group, plane), i.e. 10% less weight traffic
///    at 2-3 bits with groups of 128. The products then equal the reference on unpack(packed),
///    whose scales are the rounded ones. Scales or offsets beyond the binary16 range are
///    refused.
enum class scale_storage : std::uint8_t { f32 = 0, f16 = 1 };

/// A binary-coded matrix in the LUT kernels' tile layout. Row-wise scales only (the geometry
/// whose scales are applied once per (row, group, plane)); APoT term lists are not kept (the
/// float scales, which equal their sums, are). Move-only in spirit: copying copies the stream.
class packed_binary_coded_matrix {
 public:
  packed_binary_coded_matrix() = default;

  /// Repacks `w`, storing its scales as `storage`. Throws reparam::error if w is empty or
  /// inconsistent, has column-wise scales (scale_axis::columns: use shiftadd::multiply on the
  /// canonical matrix, or refit row-wise), a group larger than kernels::lut_max_group_size, or
  /// (f16) a finite scale or offset beyond the binary16 range. Allocates rows/64 * groups *
  /// record_bytes.
  explicit packed_binary_coded_matrix(const binary_coded_matrix& w,
                                      scale_storage storage = scale_storage::f32) {
    pack_from(w, storage);
  }

  packed_binary_coded_matrix(const packed_binary_coded_matrix& other) { *this = other; }
  packed_binary_coded_matrix& operator=(const packed_binary_coded_matrix& other) {
    if (this != &other) {
      op_ = other.op_;
      storage_ = workspace_buffer(other.storage_.size(), /*prefer_huge_pages=*/true);
      if (other.storage_.size() > 0) {
        std::memcpy(storage_.data(), other.bytes(), other.storage_.size());
      }
      op_.data = reinterpret_cast<const std::uint8_t*>(storage_.data());
    }
    return *this;
  }
  packed_binary_coded_matrix(packed_binary_coded_matrix&&) noexcept = default;
  packed_binary_coded_matrix& operator=(packed_binary_coded_matrix&&) noexcept = default;
  ~packed_binary_coded_matrix() = default;

  index rows() const noexcept { return op_.rows; }
  index cols() const noexcept { return op_.cols; }
  int bits() const noexcept { return op_.bits; }
  index group_size() const noexcept { return op_.group_size; }
  index groups() const noexcept { return op_.groups; }
  bool has_offsets() const noexcept { return op_.has_offsets; }
  scale_storage storage() const noexcept {
    return op_.has_half_scales ? scale_storage::f16 : scale_storage::f32;
  }
  bool empty() const noexcept { return op_.rows == 0; }
  /// Row ranges that are multiples of this never split a tile (pass it to split_rows).
  static constexpr index row_granularity() noexcept { return kernels::lut_tile_rows; }

  /// The raw kernel view (valid while *this lives unmoved-from and unchanged).
  const kernels::bcq_lut_operand& operand() const noexcept { return op_; }
  /// The packed stream and its size in bytes (64-byte aligned).
  const std::uint8_t* bytes() const noexcept { return op_.data; }
  std::size_t size_bytes() const noexcept { return storage_.size(); }

  /// Bytes a GEMV reads: the whole stream (signs, scales, offsets, tile padding included).
  std::size_t bytes_per_product() const noexcept { return size_bytes(); }

 private:
  void pack_from(const binary_coded_matrix& w, scale_storage storage) {
    constexpr const char* function = "shiftadd::packed_binary_coded_matrix";
    using reparam::detail::check;
    check(w.rows() >= 1 && w.cols() >= 1, function, "w is empty (", w.rows(), "x", w.cols(), ")");
    check(w.axis() == scale_axis::rows, function,
          "w has column-wise scales (scale_axis::columns); the LUT kernels need row-wise scales "
          "(use shiftadd::multiply on the canonical matrix)");
    check(w.group_size() <= kernels::lut_max_group_size, function, "group_size ", w.group_size(),
          " exceeds the kernels' limit ", kernels::lut_max_group_size);
    check(w.planes().size() == static_cast<std::size_t>(w.bits() * w.rows() * w.words_per_row()) &&
              w.scales().size() == static_cast<std::size_t>(w.rows() * w.groups() * w.bits()) &&
              w.offsets().size() ==
                  (w.has_offsets() ? static_cast<std::size_t>(w.rows() * w.groups()) : 0u),
          function, "w's arrays do not match its shape ", w.rows(), "x", w.cols(), ", bits ",
          w.bits());
    kernels::bcq_lut_operand op;
    op.rows = w.rows();
    op.cols = w.cols();
    op.group_size = w.group_size();
    op.groups = w.groups();
    op.bits = w.bits();
    op.has_offsets = w.has_offsets();
    op.quads_per_group = kernels::lut_quads_per_group(op.group_size);
    op.row_tiles = (op.rows + kernels::lut_tile_rows - 1) / kernels::lut_tile_rows;
    op.has_half_scales = storage == scale_storage::f16;
    if (op.has_half_scales) {
      const auto fits = [](float v) { return !std::isfinite(v) || std::fabs(v) <= 65504.0f; };
      check(std::all_of(w.scales().begin(), w.scales().end(), fits) &&
                std::all_of(w.offsets().begin(), w.offsets().end(), fits),
            function,
            "a scale or offset exceeds the binary16 range (65504); pack with "
            "scale_storage::f32");
    }
    op.record_bytes =
        kernels::lut_record_bytes(op.quads_per_group, op.bits, op.has_offsets, op.has_half_scales);
    // Weights are long-lived and streamed by every product: ask for huge pages.
    storage_ =
        workspace_buffer(static_cast<std::size_t>(op.row_tiles * op.groups * op.record_bytes),
                         /*prefer_huge_pages=*/true);
    auto* data = reinterpret_cast<std::uint8_t*>(storage_.data());
    std::memset(data, 0, storage_.size());
    op.data = data;
    for (index tile = 0; tile < op.row_tiles; ++tile) {
      for (index g = 0; g < op.groups; ++g) {
        std::uint8_t* record = data + (tile * op.groups + g) * op.record_bytes;
        for (index i = 0; i < kernels::lut_tile_rows; ++i) {
          const index row = tile * kernels::lut_tile_rows + i;
          if (row >= op.rows) {
            break;
          }
          const index half = i / kernels::lut_half_rows;
          const index lane = i % 16;
          const bool is_high = (i % kernels::lut_half_rows) >= 16;
          for (int p = 0; p < op.bits; ++p) {
            const std::uint32_t* words = w.plane_row(p, row);
            for (index k = 0; 4 * k < op.group_size; ++k) {
              const index col = g * op.group_size + 4 * k;
              const index count = std::min<index>(4, op.group_size - 4 * k);
              const unsigned e = detail::sign_bits(words, col, count);
              std::uint8_t* block = record + ((k / 4 * op.bits + p) * 2 + half) * 64;
              block[4 * lane + k % 4] |= static_cast<std::uint8_t>(is_high ? e << 4 : e);
            }
            set_scale(op, record, p * kernels::lut_tile_rows + i, w.scales_of(row, g)[p]);
          }
          if (op.has_offsets) {
            set_scale(op, record, op.bits * kernels::lut_tile_rows + i, w.offset_of(row, g));
          }
        }
      }
    }
    op_ = op;
  }

  /// Writes value `slot` (plane * 64 + row, offsets after the planes) of a record's scales.
  static void set_scale(const kernels::bcq_lut_operand& op, std::uint8_t* record, index slot,
                        float value) noexcept {
    std::uint8_t* area = record + op.quads_per_group * op.bits * 2 * kernels::lut_block_bytes;
    if (op.has_half_scales) {
      reinterpret_cast<std::uint16_t*>(area)[slot] = float_to_f16(value);
    } else {
      reinterpret_cast<float*>(area)[slot] = value;
    }
  }

  kernels::bcq_lut_operand op_{};
  workspace_buffer storage_;
};

namespace detail {

/// Value `slot` of a record's scales as float (see packed_binary_coded_matrix::set_scale).
inline float packed_scale(const kernels::bcq_lut_operand& op, const std::uint8_t* record,
                          index slot) noexcept {
  return op.has_half_scales ? f16_to_float(op.half_scales(record)[slot])
                            : op.scales(record, 0)[slot];
}

}  // namespace detail

/// The canonical matrix a packed one was made from: planes, scales and offsets equal those of
/// the original (apot_terms is 0: APoT term lists are not packed; with scale_storage::f16 the
/// scales and offsets are the binary16-rounded ones). Allocates.
inline binary_coded_matrix unpack(const packed_binary_coded_matrix& packed) {
  reparam::detail::check(!packed.empty(), "shiftadd::unpack", "the packed matrix is empty");
  const kernels::bcq_lut_operand& op = packed.operand();
  bcq_shape shape;
  shape.rows = op.rows;
  shape.cols = op.cols;
  shape.bits = op.bits;
  shape.group_size = op.group_size;
  shape.axis = scale_axis::rows;
  shape.has_offsets = op.has_offsets;
  binary_coded_matrix w(shape);
  for (index row = 0; row < op.rows; ++row) {
    const index tile = row / kernels::lut_tile_rows;
    const index i = row % kernels::lut_tile_rows;
    const index half = i / kernels::lut_half_rows;
    const index lane = i % 16;
    const bool is_high = (i % kernels::lut_half_rows) >= 16;
    for (index g = 0; g < op.groups; ++g) {
      const std::uint8_t* record = op.record(tile, g);
      for (int p = 0; p < op.bits; ++p) {
        for (index k = 0; 4 * k < op.group_size; ++k) {
          const std::uint8_t byte = kernels::bcq_lut_operand::block(
              record, k / 4, p, static_cast<int>(half), op.bits)[4 * lane + k % 4];
          const unsigned e = is_high ? byte >> 4 : byte & 15u;
          for (index u = 0; u < 4 && 4 * k + u < op.group_size; ++u) {
            w.set_sign(p, row, g * op.group_size + 4 * k + u, ((e >> u) & 1u) != 0);
          }
        }
        w.scales_of(row, g)[p] = detail::packed_scale(op, record, p * kernels::lut_tile_rows + i);
      }
      if (op.has_offsets) {
        w.offsets()[static_cast<std::size_t>(row * op.groups + g)] =
            detail::packed_scale(op, record, op.bits * kernels::lut_tile_rows + i);
      }
    }
  }
  return w;
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_PACKED_HPP
