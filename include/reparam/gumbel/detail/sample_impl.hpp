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

/// The shape checks of the one-index-per-row samplers, in order: `out` has one entry per row of
/// the input `m` (named `name`), `rows` is a range of its rows, and it has at most 2^33 classes.
template <class Derived>
void check_per_row_output(const char* function, const char* name,
                          const Eigen::MatrixBase<Derived>& m, index out_size, row_range rows) {
  reparam::detail::check(out_size == m.rows(), function, "out has ", out_size, " entries for ",
                         m.rows(), " rows of ", name);
  reparam::detail::check_row_range(function, rows, m.rows());
  check_classes(function, name, m.cols());
}

/// What a row holds: logits (finite or -inf) or probabilities (finite, >= 0).
enum class row_kind { logits, probabilities };

/// Every row of `rows` is valid for `Kind` and has at least `min_count` entries that count
/// (finite logits, positive probabilities); the vectorized scan of each row, then on a failure
/// the scalar check of gumbel/types.hpp on that row, which names the offending entry.
template <class Arch, row_kind Kind, class Derived>
void check_rows(const char* function, const Eigen::MatrixBase<Derived>& m, row_range rows,
                index min_count) {
  for (index r = rows.begin; r < rows.end; ++r) {
    bool has_invalid = false;
    index counted = 0;
    if constexpr (Kind == row_kind::logits) {
      counted = kernels::simd::count_finite_logits<Arch>(row_data(m, r), m.cols(), has_invalid);
    } else {
      counted = kernels::simd::count_positive_probs<Arch>(row_data(m, r), m.cols(), has_invalid);
    }
    if (has_invalid || counted < min_count) {
      const row_range row{r, r + 1};
      if constexpr (Kind == row_kind::logits) {
        gumbel::detail::check_logits(function, m, row, min_count);
      } else {
        gumbel::detail::check_probabilities(function, m, row, min_count);
      }
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
  check_rows<Arch, row_kind::logits>(function, logits, rows, k);
}

}  // namespace detail::sample

template <class Arch, class Derived>
void gumbel_max_rows(const Eigen::MatrixBase<Derived>& logits, noise_key key, index_vector_ref out,
                     row_range rows, const temperature& tau) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "gumbel::gumbel_max_rows";
  detail::sample::check_per_row_output(function, "logits", logits, out.size(), rows);
  detail::check_temperature(function, "tau", tau, logits.rows());
  detail::sample::check_rows<Arch, detail::sample::row_kind::logits>(function, logits, rows, 1);
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
  detail::sample::check_per_row_output(function, "probs", probs, out.size(), rows);
  detail::sample::check_rows<Arch, detail::sample::row_kind::probabilities>(function, probs, rows,
                                                                            1);
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
  detail::sample::check_rows<Arch, detail::sample::row_kind::probabilities>(function, probs, rows,
                                                                            k);
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
