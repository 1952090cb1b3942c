// SPDX-License-Identifier: Apache-2.0
// Vocabulary of reparam::gumbel: the noise key, a scalar-or-per-row temperature, index outputs and
// the validation shared by every entry point (tau > 0 and finite; logits finite or -inf).
#ifndef REPARAM_GUMBEL_TYPES_HPP
#define REPARAM_GUMBEL_TYPES_HPP

#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

namespace reparam::gumbel {

/// Seed and step of one draw (see kernels::gumbel_noise_block for the exact counter layout).
/// The noise of element (row, col) depends only on (seed, step, row, col): rows are addressed by
/// their index in the matrix passed to the entry point, so any split into row ranges gives the
/// same result. Use a new `step` (or seed) for every new draw, e.g. every decode step.
using noise_key = kernels::gumbel_noise_key;

/// Column vector of class indices (one per row), and a RowMajor [rows, k] index matrix.
using index_vector = Eigen::Matrix<index, Eigen::Dynamic, 1>;
using index_matrix = Eigen::Matrix<index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using index_vector_ref = Eigen::Ref<index_vector>;
using index_matrix_ref = Eigen::Ref<index_matrix, 0, Eigen::OuterStride<>>;

/// A temperature that is one positive value for every row, or one per row (a view of a double
/// vector that must outlive the call). Implicit from a double, so `tau = 0.5` works.
class temperature {
 public:
  temperature(double value = 1.0) noexcept
      : value_(value) {}  // NOLINT(google-explicit-constructor)
  /// Per-row temperatures; `values` must have one entry per row of the logits and outlive the call.
  static temperature per_row(const vector<double>& values) noexcept {
    temperature t;
    t.per_row_ = values.data();
    t.size_ = values.size();
    return t;
  }

  bool is_per_row() const noexcept { return per_row_ != nullptr; }
  /// Number of per-row values (0 for a scalar temperature).
  index size() const noexcept { return size_; }
  double at(index row) const noexcept { return per_row_ != nullptr ? per_row_[row] : value_; }

 private:
  double value_ = 1.0;
  const double* per_row_ = nullptr;
  index size_ = 0;
};

namespace detail {

/// Throws unless every temperature a call uses is finite and > 0, and a per-row temperature has
/// `rows` entries. Names the offending row and value.
inline void check_temperature(const char* function, const char* name, const temperature& tau,
                              index rows) {
  if (!tau.is_per_row()) {
    const double t = tau.at(0);
    reparam::detail::check(std::isfinite(t) && t > 0.0, function, name, " ", t,
                           " must be finite and > 0");
    return;
  }
  reparam::detail::check(tau.size() == rows, function, name, " has ", tau.size(),
                         " per-row values for ", rows, " rows");
  for (index r = 0; r < rows; ++r) {
    const double t = tau.at(r);
    reparam::detail::check(std::isfinite(t) && t > 0.0, function, name, "[", r, "] ", t,
                           " must be finite and > 0");
  }
}

/// Throws unless every entry of `values` (argument `name`) in `rows` is finite or -inf (a masked
/// class) and each row has at least `min_finite` finite entries. NaN and +inf are errors; the
/// message names the argument, row and column.
template <class Derived>
void check_finite_or_masked(const char* function, const char* name,
                            const Eigen::MatrixBase<Derived>& values, row_range rows,
                            index min_finite = 1) {
  for (index r = rows.begin; r < rows.end; ++r) {
    index finite = 0;
    for (index c = 0; c < values.cols(); ++c) {
      const auto v = static_cast<double>(values(r, c));
      if (std::isfinite(v)) {
        ++finite;
        continue;
      }
      reparam::detail::check(v == -std::numeric_limits<double>::infinity(), function, name, "(", r,
                             ", ", c, ") is ", v, "; ", name, " must be finite or -inf (masked)");
    }
    reparam::detail::check(finite >= min_finite, function, "row ", r, " of ", name, " has ", finite,
                           " finite entries; it needs at least ", min_finite);
  }
}

/// check_finite_or_masked for the argument `logits`.
template <class Derived>
void check_logits(const char* function, const Eigen::MatrixBase<Derived>& logits, row_range rows,
                  index min_finite = 1) {
  check_finite_or_masked(function, "logits", logits, rows, min_finite);
}

/// Throws unless every probability in `rows` is finite and >= 0 and each row has at least
/// `min_positive` positive entries (rows need not sum to 1: they are weights).
template <class Derived>
void check_probabilities(const char* function, const Eigen::MatrixBase<Derived>& probs,
                         row_range rows, index min_positive = 1) {
  for (index r = rows.begin; r < rows.end; ++r) {
    index positive = 0;
    for (index c = 0; c < probs.cols(); ++c) {
      const auto v = probs(r, c);
      reparam::detail::check(std::isfinite(v) && v >= 0, function, "probs(", r, ", ", c, ") is ", v,
                             "; probabilities must be finite and >= 0");
      positive += v > 0 ? 1 : 0;
    }
    reparam::detail::check(positive >= min_positive, function, "row ", r, " of probs has ",
                           positive, " positive entries; it needs at least ", min_positive);
  }
}

}  // namespace detail
}  // namespace reparam::gumbel

#endif  // REPARAM_GUMBEL_TYPES_HPP
