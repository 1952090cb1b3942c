// SPDX-License-Identifier: Apache-2.0
// Activation-aware quantization with GPTQ error compensation: ShiftAddLLM (BCQ as the quantizer
// inside the GPTQ column loop, row-wise or column-wise scales), the uniform GPTQ baseline, and the
// layer objective tr((W - Q) H (W - Q)^T) they minimize. Used by the shift-add example and the bit
// allocator; H comes from calibration inputs (reparam::second_moment).
//
// Sources: Frantar et al., "GPTQ", ICLR 2023, Alg. 1 (lazy blocks, Cholesky of H^-1, act-order,
// static groups); You et al., "ShiftAddLLM", NeurIPS 2024, section 4.2 (BCQ inside the compensated
// loop, column-wise scales); docs/research/shiftadd.md section 2.4.
#ifndef REPARAM_SHIFTADD_GPTQ_HPP
#define REPARAM_SHIFTADD_GPTQ_HPP

#include <cstddef>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/detail/bcq_checks.hpp>
#include <reparam/shiftadd/detail/gptq_core.hpp>
#include <reparam/shiftadd/detail/gptq_policies.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/uniform.hpp>

namespace reparam::shiftadd {

/// Options of the GPTQ loop.
///  - damp:       H += damp * mean(diag H) * I after the dead-input fix (GPTQ's percdamp).
///  - act_order:  process input columns by decreasing diag H (stable order among equals); the
///                result is stored in the original column order (no runtime permutation).
///  - block_size: columns per lazy block (the trailing update after each block is one GEMM).
/// Dead inputs (diag H == 0: the input was always 0 in calibration) get H_jj = 1 and their weight
/// column is zeroed before quantization, as in GPTQ.
struct gptq_params {
  double damp = 0.01;
  bool act_order = true;
  index block_size = 128;
};

/// Options of quantize_shiftadd: the BCQ fitter, the group size along `axis` (0 = the whole
/// row/column), the scale geometry and the GPTQ loop.
struct shiftadd_params {
  bcq_params bcq{};
  index group_size = 128;
  scale_axis axis = scale_axis::rows;
  gptq_params gptq{};
};

/// ShiftAddLLM: binary-coded quantization of W [rows, cols] with GPTQ error compensation against
/// the layer Hessian H [cols, cols] (e.g. second_moment::mean() of the layer's inputs), minimizing
/// tr((W - Q) H (W - Q)^T) column by column (paper section 4.2, GPTQ Alg. 1).
///
/// The quantizer per column, after the column has received the compensation of every earlier
/// column:
///  - scale_axis::columns (ShiftAddLLM's geometry): each column is fitted on its own per group of
///    group_size rows (fit_bcq_group), scales stored per (column, row group).
///  - scale_axis::rows (default, kernel-friendly): scales per (row, group of group_size columns).
///    Without act_order a group's scales are fitted (fit_bcq_group, per row) on the compensated
///    weights when the loop reaches the group's first column; each column then gets nearest-level
///    codes against them (assign_bcq_codes) after its own compensation. With act_order the groups
///    would be scattered over the permuted loop, so all scales are fitted up front on the weights
///    (dead columns zeroed) and the loop only assigns codes: GPTQ's "static groups". This keeps
///    groups contiguous in the original column order, which the format and kernels need.
/// APoT scales (bcq.apot_terms > 0) are fitted and stored as in quantize_bcq. double weights are
/// compensated in double and rounded to float only where the quantizer reads them.
/// Dead inputs: the column is zeroed; with column-wise scales it is reproduced as exact zeros,
/// with row-wise scales each weight gets the level nearest to 0 of its row group (it never
/// matters: the input is always 0).
/// H must be symmetric up to 1e-6 of its largest entry (checked); the Cholesky factorization
/// reads one triangle.
/// Throws reparam::error for empty weights, bcq parameters out of range (bits 1..8, rounds >= 0,
/// apot_terms 0..8), group_size negative or not dividing the grouped dimension, damp negative or
/// non-finite, block_size < 1, non-finite or too large weights (named by (row, col)), a Hessian
/// that is not cols x cols (both shapes named), non-finite, asymmetric or with a negative
/// diagonal, and a damped Hessian that is not positive definite (the smallest pivot named).
/// Allocates the result and scratch, once per call (nothing per column; Eigen's GEMM may take
/// packing buffers once per block): at peak about 2.25 cols^2 doubles while factoring H, then U
/// (cols^2 doubles), W^T in double (rows * cols), rows * cols code bytes, a block of errors, and
/// for row-wise scales one nearest-level table per live scale set (2^bits * 9 bytes each; static
/// groups keep all rows * groups of them, up to 256 MB, else codes are searched per weight).
/// Complexity O(cols^3) for the factor (one Cholesky, one triangular inverse) plus
/// O(rows * cols^2) for the compensation (one GEMM per block) plus the BCQ fits,
/// O(rows * cols * (bits^2 + rounds * bits)). 4096 x 4096 at 3 bits, group 128: about 4-5 s on
/// one core (bench/shiftadd/fit_bench.cpp). Thread safety: independent calls are safe.
template <class Derived>
binary_coded_matrix quantize_shiftadd(const Eigen::MatrixBase<Derived>& weights,
                                      const matrix<double>& hessian,
                                      const shiftadd_params& params) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "shiftadd::quantize_shiftadd";
  using reparam::detail::check;
  check(weights.rows() >= 1 && weights.cols() >= 1, function, "weights shape ", weights.rows(), "x",
        weights.cols(), " is empty");
  detail::check_bcq_params(function, params.bcq);
  check(params.axis == scale_axis::rows || params.axis == scale_axis::columns, function, "axis ",
        static_cast<int>(params.axis), " is not a scale_axis");
  const bool is_rows = params.axis == scale_axis::rows;
  const index grouped = is_rows ? weights.cols() : weights.rows();
  check(params.group_size >= 0, function, "group_size ", params.group_size, " is negative");
  const index group_size = params.group_size == 0 ? grouped : params.group_size;
  check(grouped % group_size == 0, function, "group_size ", group_size, " does not divide ",
        is_rows ? "cols " : "rows ", grouped);
  detail::check_gptq_options(function, params.gptq.damp, params.gptq.block_size);
  detail::check_weights(function, weights);
  detail::check_hessian(function, hessian, weights.cols());

  bcq_shape shape;
  shape.rows = weights.rows();
  shape.cols = weights.cols();
  shape.bits = params.bcq.bits;
  shape.group_size = group_size;
  shape.axis = params.axis;
  shape.apot_terms = params.bcq.apot_terms;
  binary_coded_matrix out(shape);
  const gptq_params& gptq = params.gptq;
  if (is_rows) {
    detail::bcq_rows_scheme scheme(out, params.bcq, gptq.act_order);
    detail::row_group_policy<detail::bcq_rows_scheme> policy(scheme, shape.rows, group_size,
                                                             gptq.act_order);
    detail::run_gptq(function, weights, hessian, gptq.damp, gptq.act_order, gptq.block_size,
                     policy);
  } else {
    detail::bcq_columns_policy policy(out, params.bcq);
    detail::run_gptq(function, weights, hessian, gptq.damp, gptq.act_order, gptq.block_size,
                     policy);
  }
  return out;
}

/// GPTQ with the uniform INT-b quantizer (the baseline): scale and zero point per (row, group of
/// params.group_size columns, 0 = the whole row), fitted by fit_uniform_group on the compensated
/// weights at the group's first column, or up front (static groups) with act_order, as described
/// for scale_axis::rows in quantize_shiftadd; codes by quantize_uniform after compensation.
/// Dead input columns are reproduced as exact zeros (0 is always a representable level).
/// Throws reparam::error as quantize_shiftadd (bits 1..8, group_size dividing cols, damp,
/// block_size, weights, Hessian). Allocates the result and scratch as quantize_shiftadd (no
/// tables; the groups are kept group-major during the loop).
template <class Derived>
uniform_matrix quantize_gptq(const Eigen::MatrixBase<Derived>& weights,
                             const matrix<double>& hessian, const uniform_params& params,
                             const gptq_params& gptq = {}) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "shiftadd::quantize_gptq";
  reparam::detail::check(weights.rows() >= 1 && weights.cols() >= 1, function, "weights shape ",
                         weights.rows(), "x", weights.cols(), " is empty");
  detail::check_uniform_params(function, params, weights.cols());
  detail::check_gptq_options(function, gptq.damp, gptq.block_size);
  detail::check_weights(function, weights);
  detail::check_hessian(function, hessian, weights.cols());

  uniform_matrix out;
  out.rows = weights.rows();
  out.cols = weights.cols();
  out.bits = params.bits;
  out.group_size = params.group_size == 0 ? out.cols : params.group_size;
  out.codes.resize(static_cast<std::size_t>(out.rows * out.cols));
  out.groups.resize(static_cast<std::size_t>(out.rows * out.groups_per_row()));
  detail::uniform_rows_scheme scheme(out, params.symmetric);
  detail::row_group_policy<detail::uniform_rows_scheme> policy(scheme, out.rows, out.group_size,
                                                               gptq.act_order);
  detail::run_gptq(function, weights, hessian, gptq.damp, gptq.act_order, gptq.block_size, policy);
  return out;
}

/// The layer objective tr((W - Q) H (W - Q)^T) = sum over rows r of d_r^T H d_r, d = W - Q, in
/// double: the output error summed over the calibration samples when H = sum x x^T (divide by
/// the sample count, or use second_moment::mean(), for the mean). `quantized` is a dense Q, e.g.
/// reconstruct(binary_coded_matrix) or uniform_matrix::dequantize().
/// Throws reparam::error if the shapes differ (both named), H is not cols x cols, or any input is
/// non-finite. Allocates O(rows * cols) doubles. O(rows * cols^2).
template <class A, class B>
double output_error(const Eigen::MatrixBase<A>& weights, const Eigen::MatrixBase<B>& quantized,
                    const matrix<double>& hessian) {
  reparam::detail::static_check_input<A>();
  reparam::detail::static_check_input<B>();
  constexpr const char* function = "shiftadd::output_error";
  using reparam::detail::check;
  check(weights.rows() == quantized.rows() && weights.cols() == quantized.cols(), function,
        "quantized is ", quantized.rows(), "x", quantized.cols(), " but weights are ",
        weights.rows(), "x", weights.cols());
  check(hessian.rows() == weights.cols() && hessian.cols() == weights.cols(), function,
        "hessian is ", hessian.rows(), "x", hessian.cols(), " but weights have ", weights.cols(),
        " cols");
  const matrix<double> diff = weights.template cast<double>() - quantized.template cast<double>();
  check(diff.allFinite(), function, "weights or quantized has a non-finite value");
  check(hessian.allFinite(), function, "hessian has a non-finite value");
  const matrix<double> product = diff * hessian;
  return product.cwiseProduct(diff).sum();
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_GPTQ_HPP
