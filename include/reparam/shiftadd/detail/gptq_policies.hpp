// SPDX-License-Identifier: Apache-2.0
// The quantizer policies plugged into the GPTQ loop of detail/gptq_core.hpp: BCQ with row-wise
// group scales, BCQ with ShiftAddLLM's column-wise scales, and uniform INT-b with row-wise groups.
// Not API.
#ifndef REPARAM_SHIFTADD_DETAIL_GPTQ_POLICIES_HPP
#define REPARAM_SHIFTADD_DETAIL_GPTQ_POLICIES_HPP

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/detail/bcq_fit.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/uniform.hpp>

namespace reparam::shiftadd::detail {

/// The codes the loop produces, stored column by column (`rows` contiguous codes per input
/// column) so the loop writes them sequentially, whatever the column order; copied into the
/// row-major result once, by store(), in cache-friendly tiles.
class column_codes {
 public:
  /// Allocates rows * cols bytes.
  column_codes(index rows, index cols)
      : rows_(rows), cols_(cols), codes_(static_cast<std::size_t>(rows * cols)) {}

  std::uint8_t* column(index col) noexcept { return codes_.data() + col * rows_; }
  std::uint8_t code(index row, index col) const noexcept {
    return codes_[static_cast<std::size_t>(col * rows_ + row)];
  }

  /// Sets the sign planes of `out` (rows x cols, same shape): one 32-bit word per (plane, row)
  /// and 32 columns. No allocation.
  void store(binary_coded_matrix& out) const noexcept {
    const int bits = out.bits();
    for (index word = 0; word * 32 < cols_; ++word) {
      const index first = word * 32;
      const index width = std::min<index>(32, cols_ - first);
      for (index r = 0; r < rows_; ++r) {
        std::uint32_t planes[max_bits] = {};
        for (index j = 0; j < width; ++j) {
          const unsigned value = code(r, first + j);
          for (int p = 0; p < bits; ++p) {
            planes[p] |= ((value >> p) & 1u) << j;
          }
        }
        for (int p = 0; p < bits; ++p) {
          out.plane_row(p, r)[word] = planes[p];
        }
      }
    }
  }

  /// Copies into out.codes ([rows, cols] row-major) in 64 x 64 tiles. No allocation.
  void store(uniform_matrix& out) const noexcept {
    constexpr index tile = 64;
    for (index r0 = 0; r0 < rows_; r0 += tile) {
      for (index c0 = 0; c0 < cols_; c0 += tile) {
        const index r1 = std::min(r0 + tile, rows_);
        const index c1 = std::min(c0 + tile, cols_);
        for (index r = r0; r < r1; ++r) {
          for (index c = c0; c < c1; ++c) {
            out.codes[static_cast<std::size_t>(r * cols_ + c)] = code(r, c);
          }
        }
      }
    }
  }

 private:
  index rows_;
  index cols_;
  std::vector<std::uint8_t> codes_;  // [cols, rows]
};

/// Row-wise groups (group g of row r = columns [g G, (g+1) G)), for any scheme with
///   void fit(index row, index group, const float* values, index count) noexcept
///   void quantize_column(index column, index group, const double* w, double* q) noexcept
///   void finish() noexcept
///
/// Dynamic groups (act_order off): when the loop reaches the first column of a group, the group's
/// scales are fitted per row on the compensated weights W[r, group columns] (all compensations
/// from earlier columns applied: the loop ends a block there), then each column of the group gets
/// its codes against those fixed scales after its own compensation (GPTQ's groups).
/// Static groups (act_order on, GPTQ's static_groups): with the columns permuted, a group that is
/// contiguous in the original order (what the format and the kernels need) is scattered over the
/// loop, so every group's scales are fitted up front on the dead-column-zeroed weights and the
/// loop only assigns codes.
template <class Scheme>
class row_group_policy {
 public:
  row_group_policy(Scheme& scheme, index rows, index group_size, bool is_static)
      : scheme_(scheme), group_size_(group_size), is_static_(is_static), slab_(rows, group_size) {}

  void prepare(const matrix<double>& wt) {
    if (!is_static_) {
      return;
    }
    for (index group = 0; group * group_size_ < wt.rows(); ++group) {
      fit_group(wt, group * group_size_, group);
    }
  }

  bool starts_group(index /*position*/, index column) const noexcept {
    return !is_static_ && column % group_size_ == 0;
  }

  void begin_group(index position, index column, const matrix<double>& wt) {
    fit_group(wt, position, column / group_size_);
  }

  void quantize_column(index /*position*/, index column, const double* w, double* q) noexcept {
    scheme_.quantize_column(column, column / group_size_, w, q);
  }

  void finish() noexcept { scheme_.finish(); }

 private:
  // Rows first..first+G-1 of wt are the group's columns: gather them as [rows, G] floats so each
  // row's group is contiguous for the fitter.
  void fit_group(const matrix<double>& wt, index first, index group) {
    slab_ = wt.middleRows(first, group_size_).transpose().template cast<float>();
    for (index r = 0; r < slab_.rows(); ++r) {
      scheme_.fit(r, group, slab_.row(r).data(), group_size_);
    }
  }

  Scheme& scheme_;
  index group_size_;
  bool is_static_;
  matrix<float> slab_;
};

/// Nearest-level lookup tables of many BCQ scale sets, built once per scale set: the sorted level
/// table of assign_bcq_codes (bcq.hpp's detail::bcq_level_table), so a code costs a few compares
/// instead of a table build (a sort of 2^bits levels) per weight. Codes and levels are exactly
/// those of assign_bcq_codes and bcq_level. Made by make_table_cache for a run-time bit count;
/// the Bits dispatch is one virtual call per fitted group or quantized column.
class bcq_table_cache {
 public:
  bcq_table_cache() = default;
  bcq_table_cache(const bcq_table_cache&) = delete;
  bcq_table_cache& operator=(const bcq_table_cache&) = delete;
  bcq_table_cache(bcq_table_cache&&) = delete;
  bcq_table_cache& operator=(bcq_table_cache&&) = delete;
  virtual ~bcq_table_cache() = default;

  /// Builds the table of `alphas` in `slot`. No allocation.
  virtual void build(index slot, const float* alphas) noexcept = 0;

  /// For r in [0, rows): codes[r] = nearest code of float(w[r]) in the table of slot first + r,
  /// levels[r] = its level. No allocation.
  virtual void assign_column(index first, const double* w, index rows, std::uint8_t* codes,
                             float* levels) const noexcept = 0;
};

template <int Bits>
class bcq_table_cache_of final : public bcq_table_cache {
 public:
  explicit bcq_table_cache_of(index slots) : tables_(static_cast<std::size_t>(slots)) {}

  void build(index slot, const float* alphas) noexcept override {
    build_level_table(alphas, tables_[static_cast<std::size_t>(slot)]);
  }

  void assign_column(index first, const double* w, index rows, std::uint8_t* codes,
                     float* levels) const noexcept override {
    const bcq_level_table<Bits>* tables = tables_.data() + first;
    for (index r = 0; r < rows; ++r) {
      const int i = nearest_level(tables[r], static_cast<float>(w[r]));
      codes[r] = tables[r].code[i];
      levels[r] = tables[r].level[i];
    }
  }

 private:
  std::vector<bcq_level_table<Bits>> tables_;
};

/// Bytes of one cached table for `bits` planes.
inline std::size_t table_cache_bytes_per_slot(int bits) {
  return dispatch_bits(bits, [](auto b) { return sizeof(bcq_level_table<decltype(b)::value>); });
}

/// A cache of `slots` tables for `bits` planes. Allocates.
inline std::unique_ptr<bcq_table_cache> make_table_cache(int bits, index slots) {
  return dispatch_bits(bits, [slots](auto b) -> std::unique_ptr<bcq_table_cache> {
    return std::make_unique<bcq_table_cache_of<decltype(b)::value>>(slots);
  });
}

/// Largest table cache (bytes) bcq_rows_scheme allocates; beyond it (static groups with many
/// groups at 7-8 bits) codes are assigned with assign_bcq_codes per weight, which is exact too
/// but rebuilds the table every time.
inline constexpr std::size_t max_table_cache_bytes = std::size_t{256} << 20;

/// BCQ scales per (row, group): fit_bcq_group on the group, nearest-level codes per weight
/// against the fixed scales (a cached assign_bcq_codes). Tables live at slot group * rows + row
/// for static groups (every group's tables are live) and at slot row for dynamic groups (only
/// the current group's), so a column reads them sequentially.
class bcq_rows_scheme {
 public:
  bcq_rows_scheme(binary_coded_matrix& out, const bcq_params& params, bool is_static,
                  std::size_t cache_limit = max_table_cache_bytes)
      : out_(out),
        params_(params),
        is_static_(is_static),
        cache_(static_cast<std::size_t>(out.rows() * (is_static ? out.groups() : 1)) *
                           table_cache_bytes_per_slot(params.bits) <=
                       cache_limit
                   ? make_table_cache(params.bits, out.rows() * (is_static ? out.groups() : 1))
                   : nullptr),
        codes_(out.rows(), out.cols()),
        fit_codes_(static_cast<std::size_t>(out.group_size())),
        levels_(static_cast<std::size_t>(out.rows())) {}

  void fit(index row, index group, const float* values, index count) noexcept {
    apot_term* terms = params_.apot_terms > 0 ? out_.apot_of(row, group, 0) : nullptr;
    float* alphas = out_.scales_of(row, group);
    fit_bcq_group(values, count, 1, params_, alphas, fit_codes_.data(), terms);
    if (cache_) {
      cache_->build((is_static_ ? group * out_.rows() : 0) + row, alphas);
    }
  }

  void quantize_column(index column, index group, const double* w, double* q) noexcept {
    const index rows = out_.rows();
    std::uint8_t* codes = codes_.column(column);
    if (cache_) {
      cache_->assign_column(is_static_ ? group * rows : 0, w, rows, codes, levels_.data());
    } else {
      for (index r = 0; r < rows; ++r) {
        const auto value = static_cast<float>(w[r]);
        const float* alphas = out_.scales_of(r, group);
        assign_bcq_codes(&value, 1, 1, alphas, params_.bits, codes + r);
        levels_[static_cast<std::size_t>(r)] = bcq_level(alphas, params_.bits, codes[r]);
      }
    }
    for (index r = 0; r < rows; ++r) {
      q[r] = static_cast<double>(levels_[static_cast<std::size_t>(r)]);
    }
  }

  void finish() noexcept { codes_.store(out_); }

 private:
  binary_coded_matrix& out_;
  bcq_params params_;
  bool is_static_;
  std::unique_ptr<bcq_table_cache> cache_;  // null: beyond the cache limit
  column_codes codes_;
  std::vector<std::uint8_t> fit_codes_;  // the fitter's codes, discarded (re-assigned per column)
  std::vector<float> levels_;
};

/// Uniform scale and zero point per (row, group): fit_uniform_group, quantize_uniform per weight.
/// The groups are kept group-major while the loop runs (a column reads them sequentially) and
/// copied to the row-major result by finish().
class uniform_rows_scheme {
 public:
  uniform_rows_scheme(uniform_matrix& out, bool symmetric)
      : out_(out),
        symmetric_(symmetric),
        codes_(out.rows, out.cols),
        groups_(static_cast<std::size_t>(out.rows * out.groups_per_row())) {}

  void fit(index row, index group, const float* values, index count) noexcept {
    groups_[static_cast<std::size_t>(group * out_.rows + row)] =
        fit_uniform_group(values, count, 1, out_.bits, symmetric_);
  }

  void quantize_column(index column, index group, const double* w, double* q) noexcept {
    const uniform_group* groups = groups_.data() + group * out_.rows;
    std::uint8_t* codes = codes_.column(column);
    for (index r = 0; r < out_.rows; ++r) {
      codes[r] = quantize_uniform(static_cast<float>(w[r]), groups[r], out_.bits);
      q[r] = static_cast<double>(dequantize_uniform(codes[r], groups[r]));
    }
  }

  void finish() noexcept {
    codes_.store(out_);
    const index count = out_.groups_per_row();
    for (index r = 0; r < out_.rows; ++r) {
      for (index g = 0; g < count; ++g) {
        out_.groups[static_cast<std::size_t>(r * count + g)] =
            groups_[static_cast<std::size_t>(g * out_.rows + r)];
      }
    }
  }

 private:
  uniform_matrix& out_;
  bool symmetric_;
  column_codes codes_;
  std::vector<uniform_group> groups_;  // [groups, rows]
};

/// ShiftAddLLM's column-wise scales (paper section 4.2): every column is fitted on its own, after
/// its compensation, per group of G rows (fit_bcq_group), scales stored at scale_major = column.
/// Columns are independent, so act-order needs no static groups here.
class bcq_columns_policy {
 public:
  bcq_columns_policy(binary_coded_matrix& out, const bcq_params& params)
      : out_(out),
        params_(params),
        codes_(out.rows(), out.cols()),
        column_(static_cast<std::size_t>(out.rows())) {}

  void prepare(const matrix<double>& /*wt*/) noexcept {}
  bool starts_group(index /*position*/, index /*column*/) const noexcept { return false; }
  void begin_group(index /*position*/, index /*column*/, const matrix<double>& /*wt*/) noexcept {}

  void quantize_column(index /*position*/, index column, const double* w, double* q) noexcept {
    const index rows = out_.rows();
    const index size = out_.group_size();
    for (index r = 0; r < rows; ++r) {
      column_[static_cast<std::size_t>(r)] = static_cast<float>(w[r]);
    }
    std::uint8_t* codes = codes_.column(column);
    for (index group = 0; group < out_.groups(); ++group) {
      apot_term* terms = params_.apot_terms > 0 ? out_.apot_of(column, group, 0) : nullptr;
      const float* values = column_.data() + group * size;
      float* alphas = out_.scales_of(column, group);
      fit_bcq_group(values, size, 1, params_, alphas, codes + group * size, terms);
      for (index k = 0; k < size; ++k) {
        q[group * size + k] =
            static_cast<double>(bcq_level(alphas, params_.bits, codes[group * size + k]));
      }
    }
  }

  void finish() noexcept { codes_.store(out_); }

 private:
  binary_coded_matrix& out_;
  bcq_params params_;
  column_codes codes_;
  std::vector<float> column_;
};

}  // namespace reparam::shiftadd::detail

#endif  // REPARAM_SHIFTADD_DETAIL_GPTQ_POLICIES_HPP
