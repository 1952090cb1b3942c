// SPDX-License-Identifier: Apache-2.0
// Exact categorical sampling with the Gumbel-max trick (argmax_k l_k / T + g_k ~ softmax(l / T))
// and sampling without replacement with Gumbel-top-k (Kool et al. 2019), row-wise over a
// [rows, classes] matrix. Logits and probabilities have separate entry points (a probability
// passed as a logit samples the wrong law, tensorflow/probability#1674). The noise is the exact
// gumbel_noise(key, row, col): the sampled indices do not depend on the ISA or the row split.
#ifndef REPARAM_GUMBEL_SAMPLE_HPP
#define REPARAM_GUMBEL_SAMPLE_HPP

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/arch.hpp>

namespace reparam::gumbel {

/// Gumbel-max sample of each row in `rows`: out[r] = argmax_k (logits(r, k) / tau_r + g(r, k)),
/// g = gumbel_noise(key, r, k) evaluated in double, lowest index on ties. -inf logits (masked
/// classes) are never sampled. Exact: the vectorized kernel evaluates the noise only where a
/// class can still win (a cheap bound from the uniform's bits skips the rest) and evaluates it with
/// the scalar reference there, so the result equals the reference sampler bit for bit.
/// Throws (before writing) on NaN/+inf logits, a row with no finite logit, tau <= 0 or not finite,
/// out.size() != logits.rows(), or more than 2^33 classes. No allocation.
template <class Arch = default_arch, class Derived>
void gumbel_max_rows(const Eigen::MatrixBase<Derived>& logits, noise_key key, index_vector_ref out,
                     row_range rows, const temperature& tau = 1.0);
/// All rows; returns the indices.
template <class Arch = default_arch, class Derived>
index_vector gumbel_max(const Eigen::MatrixBase<Derived>& logits, noise_key key,
                        const temperature& tau = 1.0);

/// Sample of each row from unnormalized probabilities (weights) p >= 0: out[r] =
/// argmax_k p(r, k) / E(r, k) with E = -log1p(-v) the Exp(1) variate of the same draw, which is
/// argmax_k (log p + g) without a log per class. Zero-probability classes are never sampled. With
/// the same key, sample_from_probs(softmax(l)) equals gumbel_max(l) except where two perturbed
/// values tie to rounding. Throws on negative/NaN/inf probabilities or a row with no positive one.
template <class Arch = default_arch, class Derived>
void sample_from_probs_rows(const Eigen::MatrixBase<Derived>& probs, noise_key key,
                            index_vector_ref out, row_range rows);
template <class Arch = default_arch, class Derived>
index_vector sample_from_probs(const Eigen::MatrixBase<Derived>& probs, noise_key key);

/// Gumbel-top-k: the k classes with the largest logits / tau + g, in decreasing order of that
/// value (lowest index first on ties): an ordered sample of k classes without replacement, with
/// probability prod_j p_{i_j} / (1 - sum_{l<j} p_{i_l}) (Plackett-Luce). out is [rows, k]. Throws
/// if k < 1 or a row has fewer than k finite logits (masked classes cannot be drawn), plus the
/// gumbel_max errors. No allocation.
template <class Arch = default_arch, class Derived>
void gumbel_top_k_rows(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                       index_matrix_ref out, row_range rows, const temperature& tau = 1.0);
/// The same, also writing the perturbed values logits / tau + g of the k classes to `values`
/// [rows, k] (the keys of stochastic beam search, see shift_to_maximum_rows).
template <class Arch = default_arch, class Derived>
void gumbel_top_k_rows(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                       index_matrix_ref out, matrix_ref<double> values, row_range rows,
                       const temperature& tau = 1.0);
template <class Arch = default_arch, class Derived>
index_matrix gumbel_top_k(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                          const temperature& tau = 1.0);

/// Top-k without replacement from unnormalized probabilities: the k largest p / E, in order.
/// Throws if a row has fewer than k positive probabilities.
template <class Arch = default_arch, class Derived>
void top_k_from_probs_rows(const Eigen::MatrixBase<Derived>& probs, index k, noise_key key,
                           index_matrix_ref out, row_range rows);
template <class Arch = default_arch, class Derived>
index_matrix top_k_from_probs(const Eigen::MatrixBase<Derived>& probs, index k, noise_key key);

}  // namespace reparam::gumbel

#include <reparam/gumbel/detail/sample_impl.hpp>

#endif  // REPARAM_GUMBEL_SAMPLE_HPP
