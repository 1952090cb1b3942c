// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/gumbel/noise.hpp (included at its end; self-contained on its own too).
#ifndef REPARAM_GUMBEL_DETAIL_NOISE_IMPL_HPP
#define REPARAM_GUMBEL_DETAIL_NOISE_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>  // the declarations (this file is included at its end)
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/simd/gumbel_noise.hpp>

namespace reparam::gumbel {
namespace detail {

inline void check_noise_coordinates(const char* function, index row, index col) {
  reparam::detail::check(row >= 0, function, "row ", row, " is negative");
  reparam::detail::check(col >= 0 && col < kernels::gumbel_noise_max_cols, function, "col ", col,
                         " is outside [0, 2^33)");
}

/// log(exp(a) + exp(b)) for a, b < +inf (either may be -inf).
inline double log_add_exp(double a, double b) noexcept {
  const double hi = std::max(a, b);
  if (hi == -std::numeric_limits<double>::infinity()) {
    return hi;
  }
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

/// log(1 - exp(x)) for x <= 0 (-inf at x = 0), accurate for every x: log(-expm1(x)) near 0,
/// where 1 - exp(x) cancels, log1p(-exp(x)) below -ln 2 (Maechler 2012, "Accurately computing
/// log(1 - exp(-|a|))"). Kool et al.'s log1p(-exp(x)) loses the x^2/2 term below 2^-54 (5e-10
/// relative at x = -1e-9) and all digits for |x| < 2^-54, where exp(x) rounds to 1: values
/// next to the row maximum.
inline double log1m_exp(double x) noexcept {
  constexpr double minus_ln2 = -0.69314718055994530942;
  return x > minus_ln2 ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

/// Calls f(c, e) for c in [0, cols) with e the Exp(1) variate -log1p(-v) of (row, c) of draw
/// `key`, bit for bit kernels::exponential_noise_value, one Philox block per column pair.
template <class F>
void for_each_exponential(noise_key key, index row, index cols, F&& f) {
  for (index c = 0; c < cols; c += 2) {
    const philox4x32_counter words = kernels::gumbel_noise_block(
        key, static_cast<std::uint64_t>(row), static_cast<std::uint32_t>(c >> 1));
    f(c, -std::log1p(-uniform_open01_double(words[0], words[1])));
    if (c + 1 < cols) {
      f(c + 1, -std::log1p(-uniform_open01_double(words[2], words[3])));
    }
  }
}

}  // namespace detail

inline double open_uniform(noise_key key, index row, index col) {
  detail::check_noise_coordinates("gumbel::open_uniform", row, col);
  return kernels::gumbel_noise_uniform(key, static_cast<std::uint64_t>(row),
                                       static_cast<std::uint64_t>(col));
}

inline double gumbel_noise(noise_key key, index row, index col) {
  detail::check_noise_coordinates("gumbel::gumbel_noise", row, col);
  return kernels::gumbel_noise_value(key, static_cast<std::uint64_t>(row),
                                     static_cast<std::uint64_t>(col));
}

template <class Arch, class T>
void fill_gumbel_rows(noise_key key, matrix_ref<T> out, row_range rows) {
  constexpr const char* function = "gumbel::fill_gumbel_rows";
  reparam::detail::check_row_range(function, rows, out.rows());
  reparam::detail::check(out.cols() <= kernels::gumbel_noise_max_cols, function, "out has ",
                         out.cols(), " columns; at most 2^33 are addressable");
  if (rows.empty() || out.cols() == 0) {
    return;
  }
  kernels::simd::gumbel_noise_fill<Arch, T>(key, static_cast<std::uint64_t>(rows.begin),
                                            rows.size(), out.cols(), out.row(rows.begin).data(),
                                            out.outerStride());
}

template <class Arch, class T>
void fill_gumbel(noise_key key, matrix_ref<T> out) {
  fill_gumbel_rows<Arch, T>(key, out, all_rows(out.rows()));
}

template <class T, class Arch>
matrix<T> gumbel_noise_matrix(noise_key key, index rows, index cols) {
  reparam::detail::check(rows >= 0 && cols >= 0, "gumbel::gumbel_noise_matrix", "shape [", rows,
                         ", ", cols, "] is negative");
  matrix<T> out(rows, cols);
  fill_gumbel<Arch, T>(key, out);
  return out;
}

inline double gumbel_log_pdf(double g, double location) {
  reparam::detail::check(std::isfinite(g) && std::isfinite(location), "gumbel::gumbel_log_pdf",
                         "g ", g, " and location ", location, " must be finite");
  const double x = g - location;
  if (x == -std::numeric_limits<double>::infinity()) {
    return x;  // g - location overflowed: the density underflows to 0 (-x - exp(-x) is NaN)
  }
  return -x - std::exp(-x);
}

inline double truncated_gumbel(double location, double bound, double exponential) {
  constexpr const char* function = "gumbel::truncated_gumbel";
  reparam::detail::check(std::isfinite(location), function, "location ", location,
                         " must be finite");
  reparam::detail::check(!std::isnan(bound) && bound > -std::numeric_limits<double>::infinity(),
                         function, "bound ", bound, " must be > -inf and not NaN");
  reparam::detail::check(std::isfinite(exponential) && exponential > 0.0, function, "exponential ",
                         exponential, " must be finite and > 0");
  return -detail::log_add_exp(-bound, -location + std::log(exponential));
}

template <class Derived>
void truncated_gumbel_rows(const Eigen::MatrixBase<Derived>& locations,
                           const vector<double>& bounds, noise_key key, matrix_ref<double> out,
                           row_range rows) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::truncated_gumbel_rows";
  reparam::detail::check(out.rows() == locations.rows() && out.cols() == locations.cols(), function,
                         "out is [", out.rows(), ", ", out.cols(), "] but locations are [",
                         locations.rows(), ", ", locations.cols(), "]");
  reparam::detail::check(bounds.size() == locations.rows(), function, "bounds has ", bounds.size(),
                         " entries for ", locations.rows(), " rows");
  reparam::detail::check(locations.cols() <= kernels::gumbel_noise_max_cols, function,
                         "locations has ", locations.cols(),
                         " columns; at most 2^33 are addressable");
  reparam::detail::check_row_range(function, rows, locations.rows());
  for (index r = rows.begin; r < rows.end; ++r) {
    const double bound = bounds[r];
    reparam::detail::check(!std::isnan(bound) && bound > -std::numeric_limits<double>::infinity(),
                           function, "bounds[", r, "] ", bound, " must be > -inf and not NaN");
    for (index c = 0; c < locations.cols(); ++c) {
      const auto loc = static_cast<double>(locations(r, c));
      reparam::detail::check(std::isfinite(loc) || loc == -std::numeric_limits<double>::infinity(),
                             function, "locations(", r, ", ", c, ") is ", loc,
                             "; it must be finite or -inf");
    }
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    const double minus_bound = -bounds[r];
    detail::for_each_exponential(key, r, locations.cols(), [&](index c, double e) {
      const auto loc = static_cast<double>(locations(r, c));
      // A masked class stays -inf; otherwise G <= bound is G = -log(e^-bound + e^-loc E).
      out(r, c) = loc == -std::numeric_limits<double>::infinity()
                      ? loc
                      : -detail::log_add_exp(minus_bound, -loc + std::log(e));
    });
  }
}

inline void shift_to_maximum_rows(matrix_ref<double> values, const vector<double>& targets,
                                  row_range rows) {
  constexpr const char* function = "gumbel::shift_to_maximum_rows";
  reparam::detail::check(targets.size() == values.rows(), function, "targets has ", targets.size(),
                         " entries for ", values.rows(), " rows");
  reparam::detail::check_row_range(function, rows, values.rows());
  constexpr double minus_inf = -std::numeric_limits<double>::infinity();
  for (index r = rows.begin; r < rows.end; ++r) {
    reparam::detail::check(std::isfinite(targets[r]), function, "targets[", r, "] ", targets[r],
                           " must be finite");
    bool any_finite = false;
    for (index c = 0; c < values.cols(); ++c) {
      const double v = values(r, c);
      reparam::detail::check(std::isfinite(v) || v == minus_inf, function, "values(", r, ", ", c,
                             ") is ", v, "; it must be finite or -inf");
      any_finite = any_finite || std::isfinite(v);
    }
    reparam::detail::check(any_finite, function, "row ", r, " has no finite value");
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    auto row = values.row(r);
    index arg = 0;
    for (index c = 1; c < row.size(); ++c) {
      arg = row[c] > row[arg] ? c : arg;
    }
    const double z = row[arg];
    const double t = targets[r];
    for (index c = 0; c < row.size(); ++c) {
      const double g = row[c];
      if (g == minus_inf) {
        continue;
      }
      if (c == arg || g == z) {
        row[c] = t;  // the argmax, and any value tied with it (exactly T in the formula)
        continue;
      }
      // u = T - g + log(1 - e^(g - Z)), g~ = T - softplus(u). For u > 0, T - u is taken as
      // g - log(1 - e^(g - Z)) directly: more accurate, and finite even when T - g overflows.
      const double l = detail::log1m_exp(g - z);
      const double u = t - g + l;
      row[c] = u > 0.0 ? (g - l) - std::log1p(std::exp(-u)) : t - std::log1p(std::exp(u));
    }
  }
}

}  // namespace reparam::gumbel

#endif  // REPARAM_GUMBEL_DETAIL_NOISE_IMPL_HPP
