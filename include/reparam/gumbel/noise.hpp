// SPDX-License-Identifier: Apache-2.0
// Gumbel noise on the open interval: element (row, col) of draw `key` is a pure function of
// (seed, step, row, col) (Philox4x32-10, see kernels/reference/gumbel_noise.hpp), so results are
// reproducible and identical for any split of rows into ranges. Uniforms never hit 0 or 1, Gumbel
// values are never +-inf or NaN and keep the upper tail to 2^-53 (g up to 36.7; float-uniform
// peers stop at 16.6). Truncated Gumbel and Kool et al.'s "Gumbel conditioned on its maximum".
#ifndef REPARAM_GUMBEL_NOISE_HPP
#define REPARAM_GUMBEL_NOISE_HPP

#include <cmath>
#include <cstdint>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

namespace reparam::gumbel {

/// Euler-Mascheroni constant: the mean of Gumbel(0, 1) (its variance is pi^2 / 6).
inline constexpr double euler_gamma = 0.57721566490153286061;

/// The open-interval uniform (0, 1) behind element (row, col) of draw `key`: v = P(G > g).
inline double open_uniform(noise_key key, index row, index col);
/// Gumbel(0, 1) at (row, col) of draw `key`, computed in double: the exact value every sampler
/// of this family perturbs with. Throws if row < 0 or col is outside [0, 2^33).
inline double gumbel_noise(noise_key key, index row, index col);

/// Writes Gumbel(0, 1) noise of draw `key` into rows `rows` of `out` [rows, cols] (float or
/// double; computed in double, rounded once). Row r gets the noise of row r, so disjoint ranges
/// may run concurrently and any split gives the same matrix. Vectorized for `Arch`; the values
/// agree with gumbel_noise() to within 4 (ulp(g) + 2^-53): near g = 0 the absolute term dominates,
/// since there the reference's own rounding is far more than an ulp of g. The kernels use their
/// own vectorized log (fdlibm's reduction and polynomial, about 0.8 ulp): xsimd 8.1's log and log1p
/// are as accurate but made the fill 1.8x slower, below the 4x-over-mt19937 target.
/// No allocation.
template <class Arch = default_arch, class T>
void fill_gumbel_rows(noise_key key, matrix_ref<T> out, row_range rows);
/// All rows of `out`.
template <class Arch = default_arch, class T>
void fill_gumbel(noise_key key, matrix_ref<T> out);
/// A new [rows, cols] matrix of Gumbel(0, 1) noise of draw `key`.
template <class T = double, class Arch = default_arch>
matrix<T> gumbel_noise_matrix(noise_key key, index rows, index cols);

/// log density of Gumbel(location, 1) at g: -(g - location) - exp(-(g - location)). Stable for
/// any finite g (exp(-x) overflows to +inf for x < -709, and the result is then -inf as it should
/// be). Throws on non-finite input.
inline double gumbel_log_pdf(double g, double location = 0.0);

/// Gumbel(location, 1) conditioned on G <= bound, by inversion from an Exp(1) variate e:
///   g = -logaddexp(-bound, -location + log e),
/// computed stably (no exp overflow for |location|, |bound| up to 1e300). bound = +inf gives the
/// untruncated location - log e. Throws if location is not finite, bound is NaN or -inf, or e
/// is not finite and > 0.
inline double truncated_gumbel(double location, double bound, double exponential);

/// out(r, c) = truncated_gumbel(locations(r, c), bounds[r], E(key, r, c)) for rows in `rows`,
/// with E the Exp(1) variate of the same draw as gumbel_noise (g = -log E). -inf locations (masked
/// classes) give -inf. `out` may alias `locations`. No allocation.
template <class Derived>
void truncated_gumbel_rows(const Eigen::MatrixBase<Derived>& locations,
                           const vector<double>& bounds, noise_key key, matrix_ref<double> out,
                           row_range rows);

/// Kool, van Hoof, Welling (ICML 2019) stochastic beam search: given Gumbel-perturbed values
/// phi_i + G_i of one row with maximum Z, returns in place values distributed as the same Gumbels
/// conditioned on their maximum being `target` (the parent's value):
///   g~ = -log(exp(-T) - exp(-Z) + exp(-g)),
/// in the stable form u = T - g + log(1 - exp(g - Z)), g~ = T - max(u, 0) - log1p(exp(-|u|)),
/// with log(1 - e^x) evaluated by Maechler's log1mexp (log(-expm1(x)) near 0, log1p(-exp(x))
/// below -ln 2): Kool et al.'s log1p(-exp(x)) loses all digits for values just below the maximum.
/// The argmax keeps its index and becomes exactly T. -inf entries stay -inf. Rows in `rows`.
/// Throws on NaN/+inf values, a row with no finite value or a non-finite target.
inline void shift_to_maximum_rows(matrix_ref<double> values, const vector<double>& targets,
                                  row_range rows);

}  // namespace reparam::gumbel

#include <reparam/gumbel/detail/noise_impl.hpp>

#endif  // REPARAM_GUMBEL_NOISE_HPP
