// SPDX-License-Identifier: Apache-2.0
// Orthogonal rotation folds (computational invariance of QuaRot, Ashkboos et al. 2024, section 3,
// and SpinQuant, Liu et al. 2024): the residual stream x becomes x' = R x with R orthogonal;
// every linear that writes into the stream becomes W' = R W, b' = R b, every linear that reads it
// W' = W R^T, and a unit-gain RMSNorm commutes with R (||R x|| = ||x||), so the float network is
// unchanged while outliers are spread over all channels. Also the fast Walsh-Hadamard transform
// and QuaRot's randomized Hadamard matrices. research/scale_and_gumbel.md A4 (QuaRot/SpinQuant):
// the A2 fold with a dense orthogonal R instead of diag(r).
//
// Preconditions of the stream fold, in order: fold_norm_gain on every norm (fold.hpp: gains
// become 1, a norm bias stays and is rotated here); LayerNorm only where its input is kept
// mean-free (QuaRot/SliceGPT convert LayerNorm to RMSNorm; this header cannot check which
// normalization the caller runs). Folds compute in double and round once to float, take const
// inputs and return new parameters (allocating); they keep no state (concurrent calls are safe).
#ifndef REPARAM_SCALE_ROTATION_HPP
#define REPARAM_SCALE_ROTATION_HPP

#include <cmath>
#include <cstdint>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>

namespace reparam::scale {

/// Largest |(R R^T - I)_ij| a rotation fold accepts. An exactly orthogonal R rounded to float
/// (every entry off by <= u = 2^-24 relative) has |(R R^T - I)_ij| <= 2u sum_k |R_ik| |R_jk|
/// <= 2u ~ 1.2e-7 (rows of unit norm, Cauchy-Schwarz), plus n 2^-53 from the double product; 1e-6
/// accepts such matrices with margin and refuses any R that would move the folded outputs by more
/// than about 1e-6 relative.
inline constexpr double rotation_orthogonality_tolerance = 1e-6;

namespace detail {

inline bool rotation_is_power_of_two(index n) noexcept { return n >= 1 && (n & (n - 1)) == 0; }

/// Unnormalized in-place Walsh-Hadamard butterflies on one row of n (a power of two) values,
/// then the scale 1 / sqrt(n). Natural (Sylvester) order: out_i = sum_j (-1)^popcount(i & j) x_j.
template <class Scalar>
void hadamard_row_unchecked(Scalar* row, index n, Scalar scale) noexcept {
  for (index half = 1; half < n; half *= 2) {
    for (index block = 0; block < n; block += 2 * half) {
      for (index i = block; i < block + half; ++i) {
        const Scalar a = row[i];
        const Scalar b = row[i + half];
        row[i] = a + b;
        row[i + half] = a - b;
      }
    }
  }
  for (index i = 0; i < n; ++i) {
    row[i] *= scale;
  }
}

/// Checks then transforms `rows` rows of `cols` values at `data`, rows `row_stride` apart.
template <class Scalar>
void hadamard_transform_rows_impl(Scalar* data, index rows, index cols, index row_stride) {
  constexpr const char* function = "scale::hadamard_transform_rows";
  reparam::detail::check(rotation_is_power_of_two(cols), function, "cols ", cols,
                         " is not a power of two (1, 2, 4, ...)");
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      const Scalar v = data[r * row_stride + c];
      reparam::detail::check(std::isfinite(v), function, "x(", r, ", ", c, ") = ", v,
                             " is not finite");
    }
  }
  // 1/sqrt(n) is exact for n = 4^k and one rounding otherwise.
  const auto scale = static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(cols)));
  for (index r = 0; r < rows; ++r) {
    hadamard_row_unchecked(data + r * row_stride, cols, scale);
  }
}

/// Refuses a rotation that is empty, not square, not `size` x `size` (size >= 0 given), not
/// finite, or not orthogonal within rotation_orthogonality_tolerance. O(n^3) (one R R^T).
inline void check_rotation(const char* function, const matrix<double>& rotation, index size) {
  const index n = rotation.rows();
  reparam::detail::check(n >= 1 && rotation.cols() == n, function, "rotation is ", n, " x ",
                         rotation.cols(), ", expected a non-empty square matrix");
  reparam::detail::check(n == size, function, "rotation is ", n, " x ", n, ", expected ", size,
                         " x ", size);
  for (index i = 0; i < n; ++i) {
    for (index j = 0; j < n; ++j) {
      reparam::detail::check(std::isfinite(rotation(i, j)), function, "rotation(", i, ", ", j,
                             ") = ", rotation(i, j), " is not finite");
    }
  }
  const matrix<double> gram = rotation * rotation.transpose();
  double worst = 0.0;
  index worst_i = 0;
  index worst_j = 0;
  for (index i = 0; i < n; ++i) {
    for (index j = 0; j < n; ++j) {
      const double deviation = std::abs(gram(i, j) - (i == j ? 1.0 : 0.0));
      if (deviation > worst) {
        worst = deviation;
        worst_i = i;
        worst_j = j;
      }
    }
  }
  reparam::detail::check(worst <= rotation_orthogonality_tolerance, function,
                         "rotation is not orthogonal: |(R R^T - I)(", worst_i, ", ", worst_j,
                         ")| = ", worst, " > ", rotation_orthogonality_tolerance);
}

/// The checks of a linear rotation fold: `layer` (any shape, finite, valid bias), then R of the
/// size of the rotated side (the weight's rows for a producer, its columns for a consumer).
inline void check_rotation_fold(const char* function, const linear& layer,
                                const matrix<double>& rotation, bool is_producer) {
  check_fold_linear(function, "layer", layer, -1);
  check_rotation(function, rotation, is_producer ? layer.weight.rows() : layer.weight.cols());
}

/// R b in double, rounded once to float; an empty b (no bias) stays empty.
inline vector<float> rotate_bias(const matrix<double>& rotation, const vector<float>& bias) {
  if (bias.size() == 0) {
    return {};
  }
  return (rotation * bias.cast<double>()).cast<float>();
}

}  // namespace detail

/// In place, every row x <- H_n x / sqrt(n): the normalized fast Walsh-Hadamard transform
/// (Sylvester order, H_ij = (-1)^popcount(i & j)), O(n log n) per row. H_n / sqrt(n) is symmetric
/// and orthogonal, so applying it twice gives the rows back, and on a weight it is the consumer
/// rotation fold W' = W R^T with R = H_n / sqrt(n). Computed in Scalar (each output carries about
/// log2(n) roundings). cols must be a power of two (reparam::error otherwise); NaN/Inf entries
/// are refused before anything is written. No allocation; rows are independent, so calls on
/// disjoint row blocks (x.middleRows(...)) are safe to run concurrently.
inline void hadamard_transform_rows(matrix_ref<float> x) {
  detail::hadamard_transform_rows_impl(x.data(), x.rows(), x.cols(), x.outerStride());
}
inline void hadamard_transform_rows(matrix_ref<double> x) {
  detail::hadamard_transform_rows_impl(x.data(), x.rows(), x.cols(), x.outerStride());
}

/// QuaRot's randomized Hadamard matrix R = diag(s) H_n / sqrt(n) with signs s_i = +-1 drawn from
/// Philox (key `seed`, stream 0, one bit per row): orthogonal, every entry +-1/sqrt(n), the same
/// matrix for the same (n, seed) on every platform. n must be a power of two (reparam::error
/// otherwise). Allocates n x n doubles.
inline matrix<double> make_random_hadamard(index n, std::uint64_t seed) {
  constexpr const char* function = "scale::make_random_hadamard";
  reparam::detail::check(detail::rotation_is_power_of_two(n), function, "n ", n,
                         " is not a power of two (1, 2, 4, ...)");
  matrix<double> r = matrix<double>::Identity(n, n);
  philox_engine engine(seed, 0);
  std::uint32_t bits = 0;
  for (index i = 0; i < n; ++i) {
    if (i % 32 == 0) {
      bits = engine();
    }
    const bool is_negative = ((bits >> (i % 32)) & 1u) != 0;
    r(i, i) = is_negative ? -1.0 : 1.0;
  }
  // Rows of diag(s): transforming row i gives s_i H_n[i, :] / sqrt(n) (H is symmetric).
  hadamard_transform_rows(r);
  return r;
}

/// A linear that reads the rotated stream: W' = W R^T (bias unchanged), so W' (R x) = W x.
/// Preconditions (reparam::error otherwise): layer non-empty and finite with valid bias size,
/// weight cols == R size; R square, finite and orthogonal within
/// rotation_orthogonality_tolerance (an O(n^3) check). Allocates the result.
inline linear fold_rotation_consumer(const linear& layer, const matrix<double>& rotation) {
  detail::check_rotation_fold("scale::fold_rotation_consumer", layer, rotation, false);
  return {(layer.weight.cast<double>() * rotation.transpose()).cast<float>(), layer.bias};
}

/// A linear that writes into the rotated stream: W' = R W, b' = R b, so W' x + b' = R (W x + b).
/// Preconditions as fold_rotation_consumer with weight rows == R size. Allocates the result.
inline linear fold_rotation_producer(const linear& layer, const matrix<double>& rotation) {
  detail::check_rotation_fold("scale::fold_rotation_producer", layer, rotation, true);
  return {(rotation * layer.weight.cast<double>()).cast<float>(),
          detail::rotate_bias(rotation, layer.bias)};
}

/// A norm on the rotated stream: RMSNorm(R x) = R RMSNorm(x), so with unit gain only its bias
/// changes, b' = R b (the output n + b becomes R n + R b). A gain != 1 does not commute with R:
/// it is refused, naming the channel (run fold_norm_gain first). LayerNorm commutes only when its
/// input is mean-free (not checked). Preconditions (reparam::error otherwise): gain all exactly
/// 1, bias 0 or gain-sized and finite, R valid and of the gain's size. Allocates the result.
inline norm_affine fold_rotation_norm(const norm_affine& norm, const matrix<double>& rotation) {
  constexpr const char* function = "scale::fold_rotation_norm";
  const index channels = norm.gain.size();
  reparam::detail::check(channels >= 1, function, "norm.gain is empty (no channels)");
  detail::check_fold_norm(function, norm, channels);
  for (index c = 0; c < channels; ++c) {
    reparam::detail::check(norm.gain[c] == 1.0f, function, "norm.gain[", c, "] = ", norm.gain[c],
                           " is not 1: a gain does not commute with a rotation; call "
                           "scale::fold_norm_gain first");
  }
  detail::check_rotation(function, rotation, channels);
  return {norm.gain, detail::rotate_bias(rotation, norm.bias)};
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_ROTATION_HPP
