// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/gumbel/sample.hpp: argument checks (every row of the range is validated
// by a vectorized scan before any output is written; on a failure the scalar check of
// gumbel/types.hpp re-runs on that row to name the offending entry), then one call per row of
// the pruning samplers of kernels/simd/gumbel_max.hpp.
#ifndef REPARAM_GUMBEL_DETAIL_SAMPLE_IMPL_HPP
#define REPARAM_GUMBEL_DETAIL_SAMPLE_IMPL_HPP

#include <algorithm>
#include <cstdint>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/sample.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/reference/gumbel_max.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/simd/gumbel_max.hpp>

namespace reparam::gumbel {
namespace detail::sample {

/// Ranking buffer of the top-k calls without a `values` output: k up to this many is one scan
/// of the row; larger k takes ceil(k / top_k_chunk) scans (each continues after the last class
/// of the previous one). 2 KiB of stack.
inline constexpr index top_k_chunk = 256;

template <class Derived>
const typename Derived::Scalar* row_data(const Eigen::MatrixBase<Derived>& m, index r) {
  return m.derived().data() + r * m.derived().rowStride();
}

inline void check_classes(const char* function, const char* name, index cols) {
  reparam::detail::check(cols <= kernels::gumbel_noise_max_cols, function, name, " has ", cols,
                         " classes; at most 2^33 are addressable");
}

inline void check_k(const char* function, index k) {
  reparam::detail::check(k >= 1, function, "k ", k, " must be >= 1");
}

inline void check_out_shape(const char* function, const char* name, index rows, index cols,
                            index expected_rows, index k) {
  reparam::detail::check(rows == expected_rows && cols == k, function, name, " is [", rows, ", ",
                         cols, "] but must be [", expected_rows, ", ", k, "] (rows, k)");
}

/// Every row of `rows` has only finite or -inf logits and at least `min_finite` finite ones.
template <class Arch, class Derived>
void check_logit_rows(const char* function, const Eigen::MatrixBase<Derived>& logits,
                      row_range rows, index min_finite) {
  for (index r = rows.begin; r < rows.end; ++r) {
    bool has_invalid = false;
    const index finite =
        kernels::simd::count_finite_logits<Arch>(row_data(logits, r), logits.cols(), has_invalid);
    if (has_invalid || finite < min_finite) {
      gumbel::detail::check_logits(function, logits, row_range{r, r + 1}, min_finite);
    }
  }
}

/// Every row of `rows` has only finite probabilities >= 0 and at least `min_positive` > 0.
template <class Arch, class Derived>
void check_probability_rows(const char* function, const Eigen::MatrixBase<Derived>& probs,
                            row_range rows, index min_positive) {
  for (index r = rows.begin; r < rows.end; ++r) {
    bool has_invalid = false;
    const index positive =
        kernels::simd::count_positive_probs<Arch>(row_data(probs, r), probs.cols(), has_invalid);
    if (has_invalid || positive < min_positive) {
      gumbel::detail::check_probabilities(function, probs, row_range{r, r + 1}, min_positive);
    }
  }
}

/// The ranking of row r into indices[0, k) (and values[0, k) when given), with the stack
/// buffer and several scans when no values output is given and k > top_k_chunk.
template <class RankRow>
void rank_into(index k, index* indices, double* values, RankRow rank_row) {
  if (values != nullptr) {
    rank_row(k, indices, values, nullptr);
    return;
  }
  double buffer[top_k_chunk];
  kernels::gumbel_rank last;
  for (index done = 0; done < k;) {
    const index part = std::min(top_k_chunk, k - done);
    rank_row(part, indices + done, buffer, done == 0 ? nullptr : &last);
    last = {buffer[part - 1], indices[done + part - 1]};
    done += part;
  }
}

template <class Arch, class Derived>
void top_k_logits(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                  index_matrix_ref out, double* values, index values_stride, row_range rows,
                  const temperature& tau) {
  for (index r = rows.begin; r < rows.end; ++r) {
    const auto* data = row_data(logits, r);
    const double t = tau.at(r);
    rank_into(k, out.row(r).data(), values == nullptr ? nullptr : values + r * values_stride,
              [&](index part, index* indices, double* vals, const kernels::gumbel_rank* after) {
                kernels::simd::gumbel_top_k_row<Arch>(data, logits.cols(), t, key,
                                                      static_cast<std::uint64_t>(r), part, indices,
                                                      vals, after);
              });
  }
}

template <class Arch, class Derived>
void check_top_k_logits(const char* function, const Eigen::MatrixBase<Derived>& logits, index k,
                        const index_matrix_ref& out, row_range rows, const temperature& tau) {
  check_k(function, k);
  check_out_shape(function, "out", out.rows(), out.cols(), logits.rows(), k);
  reparam::detail::check_row_range(function, rows, logits.rows());
  check_classes(function, "logits", logits.cols());
  gumbel::detail::check_temperature(function, "tau", tau, logits.rows());
  check_logit_rows<Arch>(function, logits, rows, k);
}

}  // namespace detail::sample

template <class Arch, class Derived>
void gumbel_max_rows(const Eigen::MatrixBase<Derived>& logits, noise_key key, index_vector_ref out,
                     row_range rows, const temperature& tau) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::gumbel_max_rows";
  reparam::detail::check(out.size() == logits.rows(), function, "out has ", out.size(),
                         " entries for ", logits.rows(), " rows of logits");
  reparam::detail::check_row_range(function, rows, logits.rows());
  detail::sample::check_classes(function, "logits", logits.cols());
  detail::check_temperature(function, "tau", tau, logits.rows());
  detail::sample::check_logit_rows<Arch>(function, logits, rows, 1);
  for (index r = rows.begin; r < rows.end; ++r) {
    out[r] = kernels::simd::gumbel_max_row<Arch>(detail::sample::row_data(logits, r), logits.cols(),
                                                 tau.at(r), key, static_cast<std::uint64_t>(r));
  }
}

template <class Arch, class Derived>
index_vector gumbel_max(const Eigen::MatrixBase<Derived>& logits, noise_key key,
                        const temperature& tau) {
  index_vector out(logits.rows());
  gumbel_max_rows<Arch>(logits, key, out, all_rows(logits.rows()), tau);
  return out;
}

template <class Arch, class Derived>
void sample_from_probs_rows(const Eigen::MatrixBase<Derived>& probs, noise_key key,
                            index_vector_ref out, row_range rows) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::sample_from_probs_rows";
  reparam::detail::check(out.size() == probs.rows(), function, "out has ", out.size(),
                         " entries for ", probs.rows(), " rows of probs");
  reparam::detail::check_row_range(function, rows, probs.rows());
  detail::sample::check_classes(function, "probs", probs.cols());
  detail::sample::check_probability_rows<Arch>(function, probs, rows, 1);
  for (index r = rows.begin; r < rows.end; ++r) {
    out[r] = kernels::simd::sample_from_probs_row<Arch>(
        detail::sample::row_data(probs, r), probs.cols(), key, static_cast<std::uint64_t>(r));
  }
}

template <class Arch, class Derived>
index_vector sample_from_probs(const Eigen::MatrixBase<Derived>& probs, noise_key key) {
  index_vector out(probs.rows());
  sample_from_probs_rows<Arch>(probs, key, out, all_rows(probs.rows()));
  return out;
}

template <class Arch, class Derived>
void gumbel_top_k_rows(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                       index_matrix_ref out, row_range rows, const temperature& tau) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::gumbel_top_k_rows";
  detail::sample::check_top_k_logits<Arch>(function, logits, k, out, rows, tau);
  detail::sample::top_k_logits<Arch>(logits, k, key, out, nullptr, 0, rows, tau);
}

template <class Arch, class Derived>
void gumbel_top_k_rows(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                       index_matrix_ref out, matrix_ref<double> values, row_range rows,
                       const temperature& tau) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::gumbel_top_k_rows";
  detail::sample::check_top_k_logits<Arch>(function, logits, k, out, rows, tau);
  detail::sample::check_out_shape(function, "values", values.rows(), values.cols(), logits.rows(),
                                  k);
  detail::sample::top_k_logits<Arch>(logits, k, key, out, values.data(), values.outerStride(), rows,
                                     tau);
}

template <class Arch, class Derived>
index_matrix gumbel_top_k(const Eigen::MatrixBase<Derived>& logits, index k, noise_key key,
                          const temperature& tau) {
  constexpr const char* function = "gumbel::gumbel_top_k";
  detail::sample::check_k(function, k);
  reparam::detail::check(logits.rows() == 0 || k <= logits.cols(), function, "k ", k,
                         " exceeds the ", logits.cols(), " classes");
  index_matrix out(logits.rows(), k);
  gumbel_top_k_rows<Arch>(logits, k, key, out, all_rows(logits.rows()), tau);
  return out;
}

template <class Arch, class Derived>
void top_k_from_probs_rows(const Eigen::MatrixBase<Derived>& probs, index k, noise_key key,
                           index_matrix_ref out, row_range rows) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::top_k_from_probs_rows";
  detail::sample::check_k(function, k);
  detail::sample::check_out_shape(function, "out", out.rows(), out.cols(), probs.rows(), k);
  reparam::detail::check_row_range(function, rows, probs.rows());
  detail::sample::check_classes(function, "probs", probs.cols());
  detail::sample::check_probability_rows<Arch>(function, probs, rows, k);
  for (index r = rows.begin; r < rows.end; ++r) {
    const auto* data = detail::sample::row_data(probs, r);
    detail::sample::rank_into(
        k, out.row(r).data(), nullptr,
        [&](index part, index* indices, double* values, const kernels::gumbel_rank* after) {
          kernels::simd::top_k_from_probs_row<Arch>(
              data, probs.cols(), key, static_cast<std::uint64_t>(r), part, indices, values, after);
        });
  }
}

template <class Arch, class Derived>
index_matrix top_k_from_probs(const Eigen::MatrixBase<Derived>& probs, index k, noise_key key) {
  constexpr const char* function = "gumbel::top_k_from_probs";
  detail::sample::check_k(function, k);
  reparam::detail::check(probs.rows() == 0 || k <= probs.cols(), function, "k ", k, " exceeds the ",
                         probs.cols(), " classes");
  index_matrix out(probs.rows(), k);
  top_k_from_probs_rows<Arch>(probs, k, key, out, all_rows(probs.rows()));
  return out;
}

}  // namespace reparam::gumbel

#endif  // REPARAM_GUMBEL_DETAIL_SAMPLE_IMPL_HPP
