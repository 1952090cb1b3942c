// SPDX-License-Identifier: Apache-2.0
// The second-moment (uncentred covariance) accumulator H = sum_t x_t x_t^T of calibration inputs,
// in double: the "Hessian" of the layer-wise least-squares objective ||W X - Q X||^2 that the
// activation-aware quantizers (shiftadd GPTQ/ShiftAddLLM) and the unlearn editors consume.
#ifndef REPARAM_CORE_SECOND_MOMENT_HPP
#define REPARAM_CORE_SECOND_MOMENT_HPP

#include <cmath>
#include <cstdint>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam {

/// Accumulates H = sum over samples of x x^T for inputs x of dimension dim(), exactly symmetric,
/// in double (one rounding per product term, whatever the input scalar).
///
/// Rows of the matrices passed to add() are samples (a batch of activations [samples, dim],
/// row-major, as the layers see them). Not thread-safe: give each thread its own accumulator
/// and merge them with merge().
class second_moment {
 public:
  /// An empty accumulator (sum 0, no samples). Throws reparam::error if dim < 1. Allocates
  /// dim x dim doubles.
  explicit second_moment(index dim) : sum_(checked_dim(dim), dim) { sum_.setZero(); }

  /// Adds every row of `x` ([samples, dim], float or double, row-major) as one sample.
  /// Throws reparam::error if x.cols() != dim() or x holds a non-finite value; on error the
  /// accumulator is unchanged. Allocates one scratch block of at most block_rows x dim doubles.
  /// Cost O(samples * dim^2 / 2) (a symmetric rank-k update per block of rows).
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& x) {
    detail::static_check_input<Derived>();
    constexpr const char* function = "second_moment::add";
    detail::check(x.cols() == dim(), function, "x has ", x.cols(),
                  " cols but the accumulator has dim ", dim());
    for (index r = 0; r < x.rows(); ++r) {
      for (index c = 0; c < x.cols(); ++c) {
        if (!std::isfinite(x(r, c))) {
          detail::raise<error>(detail::concat(function, ": x has non-finite value ", x(r, c),
                                              " at row ", r, ", col ", c));
        }
      }
    }
    if (x.rows() == 0) {
      return;
    }
    const index block = x.rows() < block_rows ? x.rows() : block_rows;
    matrix<double> scratch(block, dim());
    for (index start = 0; start < x.rows(); start += block) {
      const index count = x.rows() - start < block ? x.rows() - start : block;
      scratch.topRows(count) = x.middleRows(start, count).template cast<double>();
      // Lower triangle only: sum_L += B^T B for the block B of samples.
      sum_.template selfadjointView<Eigen::Lower>().rankUpdate(scratch.topRows(count).transpose());
    }
    sum_.template triangularView<Eigen::StrictlyUpper>() = sum_.transpose();
    samples_ += static_cast<std::int64_t>(x.rows());
  }

  /// Adds another accumulator's samples (e.g. one filled by another thread). Throws
  /// reparam::error if the dims differ. No allocation.
  void merge(const second_moment& other) {
    detail::check(other.dim() == dim(), "second_moment::merge", "other has dim ", other.dim(),
                  " but this accumulator has dim ", dim());
    sum_ += other.sum_;
    samples_ += other.samples_;
  }

  /// Resets to the empty state (sum 0, no samples). No allocation.
  void clear() noexcept {
    sum_.setZero();
    samples_ = 0;
  }

  index dim() const noexcept { return sum_.rows(); }
  std::int64_t samples() const noexcept { return samples_; }

  /// sum_t x_t x_t^T [dim, dim]: exactly symmetric (the upper triangle mirrors the lower one).
  const matrix<double>& sum() const noexcept { return sum_; }

  /// sum() / samples(): the mean second moment (ShiftAddLLM's and GPTQ's H up to a constant
  /// factor, which neither quantizer nor the damping depend on). Throws reparam::error if no
  /// sample was added. Allocates the result.
  matrix<double> mean() const {
    detail::check(samples_ > 0, "second_moment::mean", "no samples were added");
    return sum_ / static_cast<double>(samples_);
  }

  /// Samples converted to double per rank-k update in add().
  static constexpr index block_rows = 256;

 private:
  static index checked_dim(index dim) {
    detail::check(dim >= 1, "second_moment::second_moment", "dim ", dim, " must be >= 1");
    return dim;
  }

  matrix<double> sum_;
  std::int64_t samples_ = 0;
};

}  // namespace reparam

#endif  // REPARAM_CORE_SECOND_MOMENT_HPP
