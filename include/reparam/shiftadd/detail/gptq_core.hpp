// SPDX-License-Identifier: Apache-2.0
// Internals of the GPTQ error-compensation loop (shiftadd/gptq.hpp) and of the sensitivity
// criterion (shiftadd/bit_allocation.hpp): Hessian validation and preparation (dead inputs,
// damping, act-order), the upper Cholesky factor of H^-1, and the column loop with lazy block
// updates, written once as a template over a small quantizer policy. Not API.
#ifndef REPARAM_SHIFTADD_DETAIL_GPTQ_CORE_HPP
#define REPARAM_SHIFTADD_DETAIL_GPTQ_CORE_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam::shiftadd::detail {

/// Largest asymmetry |H(i,j) - H(j,i)| accepted, relative to the largest |H| entry. Hessians from
/// second_moment are exactly symmetric; one assembled in float may differ by a few ulps.
inline constexpr double hessian_symmetry_tolerance = 1e-6;

/// Entry-point checks of a Hessian for weights with `cols` input columns: square, dim == cols,
/// finite, symmetric (up to hessian_symmetry_tolerance), non-negative diagonal. O(cols^2).
inline void check_hessian(const char* function, const matrix<double>& hessian, index cols) {
  using reparam::detail::check;
  check(hessian.rows() == hessian.cols() && hessian.rows() == cols, function, "hessian is ",
        hessian.rows(), "x", hessian.cols(), " but weights have ", cols,
        " cols (expected a square ", cols, "x", cols, " matrix)");
  double largest = 0.0;
  for (index i = 0; i < cols; ++i) {
    for (index j = 0; j < cols; ++j) {
      const double value = hessian(i, j);
      check(std::isfinite(value), function, "hessian has non-finite value ", value, " at (", i,
            ", ", j, ")");
      largest = std::max(largest, std::abs(value));
    }
  }
  for (index i = 0; i < cols; ++i) {
    check(hessian(i, i) >= 0.0, function, "hessian diagonal H(", i, ", ", i, ") = ", hessian(i, i),
          " is negative; H must be positive semidefinite (a second moment sum x x^T)");
    for (index j = 0; j < i; ++j) {
      check(std::abs(hessian(i, j) - hessian(j, i)) <= hessian_symmetry_tolerance * largest,
            function, "hessian is not symmetric: H(", i, ", ", j, ") = ", hessian(i, j), " but H(",
            j, ", ", i, ") = ", hessian(j, i));
    }
  }
}

/// Entry-point checks of the GPTQ options.
inline void check_gptq_options(const char* function, double damp, index block_size) {
  using reparam::detail::check;
  check(std::isfinite(damp) && damp >= 0.0, function, "damp ", damp, " must be finite and >= 0");
  check(block_size >= 1, function, "block_size ", block_size, " must be >= 1");
}

/// The prepared Hessian: U with (H')^-1 = U^T U (U upper triangular, in loop order), where H' is H
/// with dead inputs fixed (H_jj = 0 -> 1) and damped (+ damp * mean(diag) * I, the mean taken after
/// the fix, as GPTQ), permuted to loop order.
struct gptq_factor {
  matrix<double> u;                   // [cols, cols], strictly lower zero (empty if not requested)
  vector<double> u_diagonal;          // U_kk, loop order
  std::vector<index> order;           // loop position -> original column
  std::vector<std::uint8_t> is_dead;  // per original column: 1 if diag H was 0
};

/// In place: the lower triangle of `l` (a nonsingular lower-triangular matrix) becomes L^-1; the
/// strictly upper triangle is not read or written. Recursive 2x2 blocking,
/// [A 0; B C]^-1 = [A^-1 0; -C^-1 B A^-1 C^-1], so the work is GEMM-shaped (n^3 / 3 flops, a third
/// of a triangular solve against the identity). `scratch` holds at least ceil(n/2) * floor(n/2)
/// doubles; no other allocation.
inline void invert_lower_triangular(matrix_ref<double> l, double* scratch) noexcept {
  const index n = l.rows();
  constexpr index leaf = 32;
  if (n <= leaf) {
    // Column by column, in place: column j of L^-1 only needs columns >= j of L (still intact)
    // and rows < i of column j of L^-1 (already written).
    for (index j = 0; j < n; ++j) {
      l(j, j) = 1.0 / l(j, j);
      for (index i = j + 1; i < n; ++i) {
        double sum = l(i, j) * l(j, j);
        for (index k = j + 1; k < i; ++k) {
          sum += l(i, k) * l(k, j);
        }
        l(i, j) = -sum / l(i, i);
      }
    }
    return;
  }
  const index first = n / 2;
  const index second = n - first;
  invert_lower_triangular(l.topLeftCorner(first, first), scratch);
  invert_lower_triangular(l.bottomRightCorner(second, second), scratch);
  Eigen::Map<Eigen::MatrixXd> product(scratch, second, first);
  auto lower_left = l.bottomLeftCorner(second, first);
  product.noalias() = lower_left * l.topLeftCorner(first, first).triangularView<Eigen::Lower>();
  lower_left.noalias() =
      -(l.bottomRightCorner(second, second).triangularView<Eigen::Lower>() * product);
}

/// Builds the factor of `hessian` (checked by check_hessian) for GPTQ: dead inputs, damping,
/// act-order (stable sort of diag H descending, after the dead fix), then U = upper Cholesky
/// factor of (H')^-1, in double.
///
/// U is computed without forming (H')^-1: with J the reversal permutation, J H' J = L L^T gives
/// H' = (J L J)(J L J)^T with J L J upper triangular, so (H')^-1 = U^T U for U = J L^-1 J, and the
/// Cholesky factor is unique. One Cholesky and one triangular inverse (about 2/3 n^3 flops) instead
/// of GPTQ's Cholesky, cholesky_inverse and second Cholesky (about 2 n^3 flops); the same matrix
/// up to rounding (tests compare it with an explicit inverse). The factorization reads the lower
/// triangle of the permuted H' (H is symmetric up to hessian_symmetry_tolerance, checked).
/// With is_full false only u_diagonal is computed (U_kk = 1 / L_(n-1-k)(n-1-k)).
/// Throws reparam::error naming `function` and the smallest pivot if H' is not positive definite
/// (Eigen's LLT fails, or a pivot is at rounding level: <= cols * eps * max diag H'). Allocates
/// O(cols^2).
inline gptq_factor factor_hessian(const char* function, const matrix<double>& hessian, double damp,
                                  bool act_order, bool is_full = true) {
  const index n = hessian.rows();
  gptq_factor out;
  out.is_dead.assign(static_cast<std::size_t>(n), 0);
  vector<double> diag(n);
  for (index j = 0; j < n; ++j) {
    out.is_dead[static_cast<std::size_t>(j)] = hessian(j, j) == 0.0 ? 1 : 0;
    diag(j) = hessian(j, j) == 0.0 ? 1.0 : hessian(j, j);
  }
  out.order.resize(static_cast<std::size_t>(n));
  std::iota(out.order.begin(), out.order.end(), index{0});
  if (act_order) {
    std::stable_sort(out.order.begin(), out.order.end(),
                     [&diag](index a, index b) { return diag(a) > diag(b); });
  }
  const double shift = damp * diag.mean();

  // reversed(i, j) = H'(p_i, p_j) with p_i = order[n-1-i] (J P^T H' P J, row-major): each row is
  // a gather from one row of H, so the reads stay in cache.
  const auto build = [&](matrix<double>& reversed) {
    for (index i = 0; i < n; ++i) {
      const index a = out.order[static_cast<std::size_t>(n - 1 - i)];
      for (index j = 0; j < n; ++j) {
        reversed(i, j) = hessian(a, out.order[static_cast<std::size_t>(n - 1 - j)]);
      }
      reversed(i, i) = diag(a) + shift;
    }
  };
  matrix<double> work(n, n);
  build(work);
  double largest_diagonal = 0.0;
  for (index j = 0; j < n; ++j) {
    largest_diagonal = std::max(largest_diagonal, diag(j) + shift);
  }
  // A pivot at rounding level of the largest diagonal means H' is singular in double (Eigen's
  // LLT only rejects pivots <= 0); the default damping keeps pivots >= damp * mean(diag H).
  const double pivot_floor =
      static_cast<double>(n) * std::numeric_limits<double>::epsilon() * largest_diagonal;
  const Eigen::LLT<Eigen::Ref<matrix<double>>> llt(work);
  const bool is_factored = llt.info() == Eigen::Success;
  double smallest_pivot = std::numeric_limits<double>::infinity();
  for (index j = 0; is_factored && j < n; ++j) {
    smallest_pivot = std::min(smallest_pivot, work(j, j) * work(j, j));
  }
  if (!is_factored || !(smallest_pivot > pivot_floor)) {
    if (!is_factored) {
      build(work);
      smallest_pivot = Eigen::LDLT<matrix<double>>(work).vectorD().minCoeff();
    }
    reparam::detail::raise<reparam::error>(reparam::detail::concat(
        function, ": hessian is not positive definite after damping (damp ", damp,
        ", dead inputs fixed): smallest pivot ", smallest_pivot, " (must exceed ", pivot_floor,
        "); increase damp or collect more calibration samples"));
  }
  out.u_diagonal.resize(n);
  for (index k = 0; k < n; ++k) {
    out.u_diagonal(k) = 1.0 / work(n - 1 - k, n - 1 - k);
  }
  if (!is_full) {
    return out;
  }
  std::vector<double> scratch(static_cast<std::size_t>((n - n / 2) * (n / 2)));
  invert_lower_triangular(work, scratch.data());
  // U(i, j) = L^-1(n-1-i, n-1-j): in row-major storage, the element order reversed.
  out.u.resize(n, n);
  std::reverse_copy(work.data(), work.data() + n * n, out.u.data());
  out.u.triangularView<Eigen::StrictlyLower>().setZero();
  return out;
}

/// The compensated column loop (GPTQ, Frantar et al. 2023, Alg. 1) over the working matrix
/// wt = W^T [cols, rows] in loop order (row k of wt is input column order[k] of W, contiguous).
/// For each column k: q = quantizer(w_k); e = (w_k - q) / U_kk; the later columns of the block are
/// compensated by -e U[k, k'] (applied left-looking: each column receives the updates of the
/// earlier columns of its block just before it is quantized, one GEMV), and after each block the
/// trailing columns by one GEMM, -E^T U[block, trailing].
///
/// Policy interface (all positions are loop positions, columns are original indices):
///   void prepare(const matrix<double>& wt)
///       called by run_gptq before the permutation, with wt in the original column order and
///       dead columns zeroed (static groups are fitted here);
///   bool starts_group(index position, index column) const noexcept
///       true where the policy must see fully compensated columns: a block ends before it, and
///       begin_group(position, column, wt) is called before quantizing it;
///   void begin_group(index position, index column, const matrix<double>& wt)
///   void quantize_column(index position, index column, const double* w, double* q) noexcept
///       w: the compensated column (rows values); writes the dequantized values to q;
///   void finish() noexcept
///       called by run_gptq after the loop (e.g. to write the codes into the result).
/// Allocates one block of errors (block_size x rows) and one column; nothing per column.
template <class Policy>
void compensate(matrix<double>& wt, const matrix<double>& u, const std::vector<index>& order,
                index block_size, Policy& policy) {
  const index cols = wt.rows();
  const index rows = wt.cols();
  const index block_capacity = std::min(block_size, cols);
  matrix<double> err(block_capacity, rows);
  vector<double> quantized(rows);
  for (index start = 0; start < cols;) {
    index end = std::min(start + block_size, cols);
    for (index k = start + 1; k < end; ++k) {
      if (policy.starts_group(k, order[static_cast<std::size_t>(k)])) {
        end = k;
        break;
      }
    }
    const index column0 = order[static_cast<std::size_t>(start)];
    if (policy.starts_group(start, column0)) {
      policy.begin_group(start, column0, wt);
    }
    for (index k = start; k < end; ++k) {
      const index done = k - start;
      if (done > 0) {
        wt.row(k).noalias() -= u.col(k).segment(start, done).transpose() * err.topRows(done);
      }
      policy.quantize_column(k, order[static_cast<std::size_t>(k)], wt.row(k).data(),
                             quantized.data());
      err.row(done) = (wt.row(k) - quantized.transpose()) / u(k, k);
    }
    if (end < cols) {
      const index count = end - start;
      wt.bottomRows(cols - end).noalias() -=
          u.block(start, end, count, cols - end).transpose() * err.topRows(count);
    }
    start = end;
  }
}

/// W^T in double [cols, rows] with the columns of dead inputs zeroed (original column order),
/// transposed in 32 x 32 tiles so reads and writes stay in cache.
template <class Derived>
matrix<double> working_transpose(const Eigen::MatrixBase<Derived>& weights,
                                 const std::vector<std::uint8_t>& is_dead) {
  const index rows = weights.rows();
  const index cols = weights.cols();
  matrix<double> wt(cols, rows);
  constexpr index tile = 32;
  for (index r0 = 0; r0 < rows; r0 += tile) {
    const index r1 = std::min(r0 + tile, rows);
    for (index c0 = 0; c0 < cols; c0 += tile) {
      const index c1 = std::min(c0 + tile, cols);
      for (index c = c0; c < c1; ++c) {
        const bool is_zero = is_dead[static_cast<std::size_t>(c)] != 0;
        for (index r = r0; r < r1; ++r) {
          wt(c, r) = is_zero ? 0.0 : static_cast<double>(weights(r, c));
        }
      }
    }
  }
  return wt;
}

/// Rows of wt rearranged to loop order: row k becomes old row order[k] (in place, by cycles).
inline void permute_rows(matrix<double>& wt, const std::vector<index>& order) {
  Eigen::PermutationMatrix<Eigen::Dynamic, Eigen::Dynamic, index> permutation(wt.rows());
  for (index k = 0; k < wt.rows(); ++k) {
    permutation.indices()(k) = order[static_cast<std::size_t>(k)];
  }
  wt = permutation.transpose() * wt;
}

/// The whole GPTQ driver: factor the Hessian, build the working matrix, let the policy see the
/// original-order weights (policy.prepare(wt), e.g. static groups), permute, run the loop.
template <class Derived, class Policy>
void run_gptq(const char* function, const Eigen::MatrixBase<Derived>& weights,
              const matrix<double>& hessian, double damp, bool act_order, index block_size,
              Policy& policy) {
  const gptq_factor factor = factor_hessian(function, hessian, damp, act_order);
  matrix<double> wt = working_transpose(weights, factor.is_dead);
  policy.prepare(wt);
  if (act_order) {
    permute_rows(wt, factor.order);
  }
  compensate(wt, factor.u, factor.order, block_size, policy);
  policy.finish();
}

}  // namespace reparam::shiftadd::detail

#endif  // REPARAM_SHIFTADD_DETAIL_GPTQ_CORE_HPP
