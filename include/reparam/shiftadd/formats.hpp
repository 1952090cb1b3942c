// SPDX-License-Identifier: Apache-2.0
// The binary-coded weight format of the shift-add family (ShiftAddLLM, You et al. 2024, eq. 1;
// LUT-GEMM's extended BCQ): W ~= sum_p alpha_p * s_p (+ offset), with q sign planes s_p in {-1,+1}
// and scaling factors shared by a group of weights. Used by the fitters (which produce it), the
// reference multiply and the kernels (which consume it) and io (which serializes it).
#ifndef REPARAM_SHIFTADD_FORMATS_HPP
#define REPARAM_SHIFTADD_FORMATS_HPP

#include <cstddef>
#include <cstdint>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam::shiftadd {

/// Largest number of planes the format holds (codes are one byte).
inline constexpr int max_bits = 8;

/// Which weights share a set of scaling factors.
///  - rows:    alpha[row][group][plane]; group g of row r = columns [g*G, (g+1)*G). The default,
///             kernel-friendly geometry (LUT-GEMM): scales applied once per (row, group, plane).
///  - columns: alpha[col][group][plane]; group g of column c = rows [g*G, (g+1)*G).
///             ShiftAddLLM's column-wise geometry (one scale set per input column and row group).
enum class scale_axis : std::uint8_t { rows = 0, columns = 1 };

/// One power-of-two term of an APoT scale: sign * 2^exponent (sign in {-1, 0, +1}).
struct apot_term {
  std::int8_t sign = 0;
  std::int8_t exponent = 0;
};
static_assert(sizeof(apot_term) == 2, "apot_term is stored as two int8 values");

/// Shape and options of a binary-coded matrix.
struct bcq_shape {
  index rows = 0;        // output channels
  index cols = 0;        // input channels
  int bits = 3;          // planes q, 1..max_bits
  index group_size = 0;  // weights per scale group along the group axis; 0 = the whole row/column
  scale_axis axis = scale_axis::rows;
  int apot_terms = 0;  // 0: float scales; K > 0: each scale is an exact sum of K signed powers of 2
  bool has_offsets = false;  // per-group additive offset (exact uniform INT-b conversion)
};

/// A binary-coded matrix W [rows, cols] (row-major [out, in], like every reparam weight).
///
/// Storage (all little-endian, every array dense and row-major in the order shown):
///
///   array     type       shape                                  meaning
///   --------  ---------  -------------------------------------  --------------------------------
///   planes    uint32     [bits, rows, words_per_row]            bit c%32 of word c/32 is 1 iff
///                                                               s_p[r, c] = +1; padding bits 0
///   scales    float      [scale_major, groups, bits]            alpha (>= 0 from the fitters)
///   offsets   float      [scale_major, groups]                  only if has_offsets
///   apot      apot_term  [scale_major, groups, bits, terms]     only if apot_terms > 0; the
///                                                               float scales equal their sums
///
/// scale_major = rows for scale_axis::rows, cols for scale_axis::columns; groups = (cols or rows)
/// / group_size. The value of W[r, c] is ((alpha_0 s_0 + alpha_1 s_1) + ...) + offset, summed in
/// float in plane order (value() and reconstruct() define the order).
class binary_coded_matrix {
 public:
  binary_coded_matrix() = default;

  /// All signs -1, scales and offsets 0. Throws reparam::error on an invalid shape: rows or cols
  /// < 1, bits outside [1, max_bits], group_size < 0 or not dividing the grouped dimension,
  /// apot_terms outside [0, 8]. Allocates.
  explicit binary_coded_matrix(const bcq_shape& shape) : shape_(shape) {
    constexpr const char* function = "shiftadd::binary_coded_matrix";
    reparam::detail::check(shape.rows >= 1 && shape.cols >= 1, function, "shape ", shape.rows, "x",
                           shape.cols, " must have rows and cols >= 1");
    reparam::detail::check(shape.bits >= 1 && shape.bits <= max_bits, function, "bits ", shape.bits,
                           " is outside [1, ", max_bits, "]");
    const index grouped = shape.axis == scale_axis::rows ? shape.cols : shape.rows;
    reparam::detail::check(shape.group_size >= 0, function, "group_size ", shape.group_size,
                           " is negative");
    if (shape_.group_size == 0) {
      shape_.group_size = grouped;
    }
    reparam::detail::check(grouped % shape_.group_size == 0, function, "group_size ",
                           shape_.group_size, " does not divide ",
                           shape.axis == scale_axis::rows ? "cols " : "rows ", grouped);
    reparam::detail::check(shape.apot_terms >= 0 && shape.apot_terms <= 8, function, "apot_terms ",
                           shape.apot_terms, " is outside [0, 8]");
    words_per_row_ = (shape.cols + 31) / 32;
    groups_ = grouped / shape_.group_size;
    planes_.assign(static_cast<std::size_t>(shape.bits * shape.rows * words_per_row_), 0u);
    scales_.assign(static_cast<std::size_t>(scale_major() * groups_ * shape.bits), 0.0f);
    if (shape.has_offsets) {
      offsets_.assign(static_cast<std::size_t>(scale_major() * groups_), 0.0f);
    }
    if (shape.apot_terms > 0) {
      apot_.assign(
          static_cast<std::size_t>(scale_major() * groups_ * shape.bits * shape.apot_terms),
          apot_term{});
    }
  }

  const bcq_shape& shape() const noexcept { return shape_; }
  index rows() const noexcept { return shape_.rows; }
  index cols() const noexcept { return shape_.cols; }
  int bits() const noexcept { return shape_.bits; }
  index group_size() const noexcept { return shape_.group_size; }
  scale_axis axis() const noexcept { return shape_.axis; }
  int apot_terms() const noexcept { return shape_.apot_terms; }
  bool has_offsets() const noexcept { return shape_.has_offsets; }
  /// Groups per scale-major line (per row for axis rows, per column for axis columns).
  index groups() const noexcept { return groups_; }
  /// rows() for scale_axis::rows, cols() for scale_axis::columns.
  index scale_major() const noexcept {
    return shape_.axis == scale_axis::rows ? shape_.rows : shape_.cols;
  }
  index words_per_row() const noexcept { return words_per_row_; }

  /// The group that W[row, col] belongs to, and the scale-major line it is stored under.
  index group_of(index row, index col) const noexcept {
    return (shape_.axis == scale_axis::rows ? col : row) / shape_.group_size;
  }
  index major_of(index row, index col) const noexcept {
    return shape_.axis == scale_axis::rows ? row : col;
  }

  // --- raw arrays (layout in the class comment) ---
  std::uint32_t* plane_row(int plane, index row) noexcept {
    return planes_.data() + (plane * shape_.rows + row) * words_per_row_;
  }
  const std::uint32_t* plane_row(int plane, index row) const noexcept {
    return planes_.data() + (plane * shape_.rows + row) * words_per_row_;
  }
  std::vector<std::uint32_t>& planes() noexcept { return planes_; }
  const std::vector<std::uint32_t>& planes() const noexcept { return planes_; }
  std::vector<float>& scales() noexcept { return scales_; }
  const std::vector<float>& scales() const noexcept { return scales_; }
  std::vector<float>& offsets() noexcept { return offsets_; }
  const std::vector<float>& offsets() const noexcept { return offsets_; }
  std::vector<apot_term>& apot() noexcept { return apot_; }
  const std::vector<apot_term>& apot() const noexcept { return apot_; }

  // --- element access (no checks: indices are the caller's responsibility) ---
  /// The `bits` scales of (major, group), plane 0 first.
  float* scales_of(index major, index group) noexcept {
    return scales_.data() + (major * groups_ + group) * shape_.bits;
  }
  const float* scales_of(index major, index group) const noexcept {
    return scales_.data() + (major * groups_ + group) * shape_.bits;
  }
  float offset_of(index major, index group) const noexcept {
    return shape_.has_offsets ? offsets_[static_cast<std::size_t>(major * groups_ + group)] : 0.0f;
  }
  /// The `terms` APoT terms of plane `plane` of (major, group).
  apot_term* apot_of(index major, index group, int plane) noexcept {
    return apot_.data() + ((major * groups_ + group) * shape_.bits + plane) * shape_.apot_terms;
  }
  const apot_term* apot_of(index major, index group, int plane) const noexcept {
    return apot_.data() + ((major * groups_ + group) * shape_.bits + plane) * shape_.apot_terms;
  }

  /// Sign of plane `plane` at (row, col): true for +1.
  bool sign(int plane, index row, index col) const noexcept {
    return ((plane_row(plane, row)[col >> 5] >> (col & 31)) & 1u) != 0;
  }
  void set_sign(int plane, index row, index col, bool positive) noexcept {
    std::uint32_t& word = plane_row(plane, row)[col >> 5];
    const std::uint32_t bit = 1u << (col & 31);
    word = positive ? (word | bit) : (word & ~bit);
  }
  /// The q-bit code of (row, col): bit p set iff s_p = +1.
  std::uint8_t code(index row, index col) const noexcept {
    unsigned c = 0;
    for (int p = 0; p < shape_.bits; ++p) {
      c |= (sign(p, row, col) ? 1u : 0u) << p;
    }
    return static_cast<std::uint8_t>(c);
  }
  void set_code(index row, index col, std::uint8_t code) noexcept {
    for (int p = 0; p < shape_.bits; ++p) {
      set_sign(p, row, col, ((static_cast<unsigned>(code) >> p) & 1u) != 0);
    }
  }

  /// W[row, col] in the format's defined summation order.
  float value(index row, index col) const noexcept {
    const index major = major_of(row, col);
    const index group = group_of(row, col);
    const float* alpha = scales_of(major, group);
    float sum = 0.0f;
    for (int p = 0; p < shape_.bits; ++p) {
      sum += sign(p, row, col) ? alpha[p] : -alpha[p];
    }
    return shape_.has_offsets ? sum + offset_of(major, group) : sum;
  }

  /// Bytes of the stored format: sign planes (bits * rows * cols / 8, rows padded to 32 bits),
  /// scales as fp32 (or, with APoT, 2 bytes per term instead), and fp32 offsets.
  std::size_t packed_size() const noexcept {
    const std::size_t scale_count = scales_.size();
    const std::size_t scale_bytes =
        shape_.apot_terms > 0 ? scale_count * static_cast<std::size_t>(shape_.apot_terms) * 2
                              : scale_count * sizeof(float);
    return planes_.size() * sizeof(std::uint32_t) + scale_bytes + offsets_.size() * sizeof(float);
  }

  /// Stored bits per weight, scales and offsets included.
  double bits_per_weight() const noexcept {
    return static_cast<double>(packed_size()) * 8.0 /
           (static_cast<double>(shape_.rows) * static_cast<double>(shape_.cols));
  }

 private:
  bcq_shape shape_{};
  index words_per_row_ = 0;
  index groups_ = 0;
  std::vector<std::uint32_t> planes_;
  std::vector<float> scales_;
  std::vector<float> offsets_;
  std::vector<apot_term> apot_;
};

/// Dense W [rows, cols] with W[r, c] = value(r, c). Allocates.
inline matrix<float> reconstruct(const binary_coded_matrix& m) {
  matrix<float> out(m.rows(), m.cols());
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      out(r, c) = m.value(r, c);
    }
  }
  return out;
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_FORMATS_HPP
