// SPDX-License-Identifier: Apache-2.0
// Exact Gumbel-max and Gumbel-top-k sampling by pruning (the model is kernels/reference/
// gumbel_max.hpp; every path returns its indices and values bit for bit). Used by
// gumbel::gumbel_max_rows, sample_from_probs_rows, gumbel_top_k_rows and top_k_from_probs_rows.
//
// Most classes of a row cannot win: their logit is too far below the best perturbed value B seen
// so far for any noise the uniform's bits allow. Per row:
//  1. seeding (cheap vector passes over the row, no noise): the class of the largest logit (and
//     for top-k, up to about 2k classes of the largest logits, chosen by counting the logits above
//     max - {1, 2, 4, 8} nats) get their exact perturbed value, so B starts high;
//  2. scan, in chunks of 256 columns: a chunk whose largest logit plus the largest Gumbel value on
//     the noise grid (36.74) stays below B is skipped without generating its noise (masked or
//     very peaked rows). Otherwise the chunk's Philox words come from gumbel_noise_words<Arch>
//     into a stack buffer and a vector test bounds the noise of every class from its high word:
//     v >= w = (high >> 1) 2^-31, so E = -log1p(-v) = v + v^2/2 + v^3/3 + ... >= P = w + w^2/2
//     + w^3/3 and g = -log E <= -log P <= ln2 (127 - bits(float(P)) / 2^23) (the bit pattern of
//     a positive float read as an integer is at most 2^23 (log2 + 127): the classic piecewise
//     linear log2; high < 2 gives P = 0 and a bound of 88 > 36.74). A class survives when
//       float(logit) * float(1 / tau) - ln2 / 2^23 * float(bits(P)) >= B - 127 ln2 - margin,
//     margin = 2^-18 (|B| + 256), far above the float rounding of the test (see
//     logit_problem::threshold). For probabilities, p / E <= p / P, and a class survives when
//     float(p) >= P * float(B (1 - 2^-18)) rounded down (rounding is monotone, so no margin
//     beyond that factor is needed). AVX-512: 16 classes per test (vpermt2d gathers the 16 high
//     words), AVX2: 8 (vshufps + vpermq), SSE2: 4 (shufps), other archs: one class at a time
//     with the same float formulas;
//  3. only surviving classes get the reference's exact double expression, from the same words,
//     and enter a ranking sorted by (value decreasing, index increasing) held in the caller's
//     output row (top-k: k indices and k values; the threshold B is the k-th value once k
//     classes are ranked, -inf before). The result is the reference's: the ranking is the first
//     k classes of a total order, and a pruned class provably ranks after the k-th.
// Cost per row: two or three vector passes over the logits, the Philox words of the chunks not
// skipped, one vector test per 4 to 16 classes, and for S surviving classes S exact evaluations
// (two logs each) and S sorted insertions (O(k) each). S is about the number of classes within a
// few nats of B plus sum exp(x - B) over the others (about 1 + ln(cols) for equal logits,
// the worst natural case; a few tens for LLM-like rows); O(cols * k) only for adversarial rows.
// Temperatures outside [1e-30, 1e30] run the reference (the float test needs a normal 1 / tau).
#ifndef REPARAM_KERNELS_SIMD_GUMBEL_MAX_HPP
#define REPARAM_KERNELS_SIMD_GUMBEL_MAX_HPP

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include <reparam/core/index.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_max.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/simd/gumbel_noise.hpp>

#if defined(__SSE2__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define REPARAM_HAS_GUMBEL_MAX_AVX512 1
#else
#define REPARAM_HAS_GUMBEL_MAX_AVX512 0
#endif
#if defined(__AVX2__)
#define REPARAM_HAS_GUMBEL_MAX_AVX2 1
#else
#define REPARAM_HAS_GUMBEL_MAX_AVX2 0
#endif
#if defined(__SSE2__)
#define REPARAM_HAS_GUMBEL_MAX_SSE2 1
#else
#define REPARAM_HAS_GUMBEL_MAX_SSE2 0
#endif

#if defined(__GNUC__)
#define REPARAM_GUMBEL_MAX_INLINE inline __attribute__((always_inline))
#else
#define REPARAM_GUMBEL_MAX_INLINE inline
#endif

namespace reparam::kernels::simd {

/// Code paths of the samplers, worst to best.
enum class gumbel_max_path { generic, sse2, avx2, avx512 };

/// The path an instantiation for `Arch` runs: avx512 for the AVX-512 tags, avx2 for xsimd::avx2
/// and fma3<avx2>, sse2 for the SSE tags, each when the translation unit enables that ISA;
/// generic (scalar test, same formulas) otherwise.
template <class Arch>
constexpr gumbel_max_path gumbel_max_path_of() noexcept {
  using A = simd_arch_t<Arch>;
  if constexpr (REPARAM_HAS_GUMBEL_MAX_AVX512 != 0 && std::is_base_of_v<xsimd::avx512f, A> &&
                A::supported()) {
    return gumbel_max_path::avx512;
  } else if constexpr (REPARAM_HAS_GUMBEL_MAX_AVX2 != 0 && std::is_base_of_v<xsimd::avx2, A> &&
                       A::supported()) {
    return gumbel_max_path::avx2;
  } else if constexpr (REPARAM_HAS_GUMBEL_MAX_SSE2 != 0 && std::is_base_of_v<xsimd::sse2, A> &&
                       A::supported()) {
    return gumbel_max_path::sse2;
  } else {
    return gumbel_max_path::generic;
  }
}

namespace detail::gumbel_max {

/// Columns per chunk of Philox words (128 blocks, 2 KiB on the stack).
inline constexpr index chunk_cols = 256;
/// Temperatures the float test handles (1 / tau must be a normal float with room to spare).
inline constexpr double min_fast_tau = 1e-30;
inline constexpr double max_fast_tau = 1e30;
inline constexpr double ln2 = 0.69314718055994530942;
/// Above every Gumbel value of the noise grid: g(2^-53) = -log(-log1p(-2^-53)) = 36.7368.
inline constexpr double max_gumbel = 36.75;
/// g <= bound_offset - bound_slope * bits(float(P)), P the lower bound of E (see the file
/// comment and lower_exponential).
inline constexpr double bound_offset = 127.0 * ln2;
inline constexpr float bound_slope = static_cast<float>(ln2 / 8388608.0);
inline constexpr float two_to_minus_31 = 1.0f / 2147483648.0f;
inline constexpr float one_third = 1.0f / 3.0f;
/// Above every p / E over p: E >= v (1 - 2^-52) >= 2^-53 (1 - 2^-52), with room for rounding.
inline constexpr double max_inverse_exponential = 9007199254740992.0 * (1.0 + 1.0 / 1048576.0);

/// The largest float <= y (-inf below the float range, +inf for y = +inf).
inline float float_at_most(double y) noexcept {
  constexpr auto float_max = static_cast<double>(std::numeric_limits<float>::max());
  if (y > float_max) {
    return y == std::numeric_limits<double>::infinity() ? std::numeric_limits<float>::infinity()
                                                        : std::numeric_limits<float>::max();
  }
  if (y < -float_max) {
    return -std::numeric_limits<float>::infinity();
  }
  auto f = static_cast<float>(y);
  if (static_cast<double>(f) > y) {
    f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  }
  return f;
}

/// float(x) for the scalar test: out-of-range doubles become +-inf (as cvtpd2ps does).
template <class T>
float to_float(T x) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    constexpr auto float_max = static_cast<double>(std::numeric_limits<float>::max());
    if (x > float_max) {
      return std::numeric_limits<float>::infinity();
    }
    if (x < -float_max) {
      return -std::numeric_limits<float>::infinity();
    }
    return static_cast<float>(x);
  }
}

REPARAM_GUMBEL_MAX_INLINE int lowest_bit(unsigned mask) noexcept {
#if defined(__GNUC__)
  return __builtin_ctz(mask);
#else
  int b = 0;
  while (((mask >> b) & 1u) == 0) {
    ++b;
  }
  return b;
#endif
}

/// P = w + w^2 / 2 + w^3 / 3 <= -log1p(-v) = E, with w = float(high >> 1) 2^-31 <= v (up to
/// the float rounding, < 2^-21 relative): the first terms of E's series at the uniform's lower
/// bound. a = high >> 1 < 2^31 converts as an int32.
REPARAM_GUMBEL_MAX_INLINE float lower_exponential(std::uint32_t high) noexcept {
  const float w = static_cast<float>(static_cast<std::int32_t>(high >> 1)) * two_to_minus_31;
  return w * (w * (w * one_third + 0.5f) + 1.0f);
}

/// float(bits(f)) for f >= 0: ~ 2^23 (log2 f + 127), never above it.
REPARAM_GUMBEL_MAX_INLINE float exponent_feature(float f) noexcept {
  std::int32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<float>(bits);
}

/// One class at a time: the generic path and the tails of the vector paths.
struct scalar_ops {
  static constexpr index width = 1;

  template <class T>
  static REPARAM_GUMBEL_MAX_INLINE unsigned logit_survivors(const T* logits,
                                                            const std::uint32_t* words,
                                                            float inv_tau,
                                                            float threshold) noexcept {
    const float e = exponent_feature(lower_exponential(words[0]));
    const float t = to_float(logits[0]) * inv_tau - bound_slope * e;
    return t >= threshold ? 1u : 0u;
  }

  template <class T>
  static REPARAM_GUMBEL_MAX_INLINE unsigned prob_survivors(const T* probs,
                                                           const std::uint32_t* words,
                                                           float scale) noexcept {
    return to_float(probs[0]) >= lower_exponential(words[0]) * scale ? 1u : 0u;
  }
};

// The vector tests: one body (vector_ops) over the pieces of each ISA. f32 / i32 are vectors of
// `width` floats / int32; every piece is one or two instructions. mul_add(a, b, c) = a b + c is
// fused where FMA is available (AVX-512, AVX2 built with FMA); minus_product(x, a, b) = x - a b
// is fused on AVX-512 only.

#if REPARAM_HAS_GUMBEL_MAX_AVX512
struct avx512_isa {
  using f32 = __m512;
  using i32 = __m512i;
  static constexpr index width = 16;

  static REPARAM_GUMBEL_MAX_INLINE f32 load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static REPARAM_GUMBEL_MAX_INLINE f32 load(const double* p) noexcept {
    const __m256 lo = _mm512_cvtpd_ps(_mm512_loadu_pd(p));
    const __m256 hi = _mm512_cvtpd_ps(_mm512_loadu_pd(p + 8));
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
  }
  /// The high words of 16 consecutive columns, words[0, 2, ..., 30] (vpermt2d).
  static REPARAM_GUMBEL_MAX_INLINE i32 high_words(const std::uint32_t* words) noexcept {
    const __m512i a = _mm512_loadu_si512(words);
    const __m512i b = _mm512_loadu_si512(words + 16);
    const __m512i even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi32(a, even, b);
  }
  static REPARAM_GUMBEL_MAX_INLINE i32 halve(i32 a) noexcept { return _mm512_srli_epi32(a, 1); }
  static REPARAM_GUMBEL_MAX_INLINE f32 to_float(i32 a) noexcept { return _mm512_cvtepi32_ps(a); }
  static REPARAM_GUMBEL_MAX_INLINE i32 bits(f32 a) noexcept { return _mm512_castps_si512(a); }
  static REPARAM_GUMBEL_MAX_INLINE f32 set1(float v) noexcept { return _mm512_set1_ps(v); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul(f32 a, f32 b) noexcept { return _mm512_mul_ps(a, b); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul_add(f32 a, f32 b, f32 c) noexcept {
    return _mm512_fmadd_ps(a, b, c);
  }
  static REPARAM_GUMBEL_MAX_INLINE f32 minus_product(f32 x, f32 a, f32 b) noexcept {
    return _mm512_fnmadd_ps(a, b, x);
  }
  /// Bit l set when a[l] >= b[l].
  static REPARAM_GUMBEL_MAX_INLINE unsigned at_least(f32 a, f32 b) noexcept {
    return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ));
  }
};
#endif

#if REPARAM_HAS_GUMBEL_MAX_AVX2
struct avx2_isa {
  using f32 = __m256;
  using i32 = __m256i;
  static constexpr index width = 8;

  static REPARAM_GUMBEL_MAX_INLINE f32 load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static REPARAM_GUMBEL_MAX_INLINE f32 load(const double* p) noexcept {
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(p + 4)),
                           _mm256_cvtpd_ps(_mm256_loadu_pd(p)));
  }
  /// The high words of 8 consecutive columns: vshufps picks the even words of each 128-bit lane
  /// of the two loads ([h0 h1 h4 h5 | h2 h3 h6 h7]) and vpermq puts the quads in order.
  static REPARAM_GUMBEL_MAX_INLINE i32 high_words(const std::uint32_t* words) noexcept {
    const __m256 a =
        _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words)));
    const __m256 b =
        _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + 8)));
    return _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88)), 0xD8);
  }
  static REPARAM_GUMBEL_MAX_INLINE i32 halve(i32 a) noexcept { return _mm256_srli_epi32(a, 1); }
  static REPARAM_GUMBEL_MAX_INLINE f32 to_float(i32 a) noexcept { return _mm256_cvtepi32_ps(a); }
  static REPARAM_GUMBEL_MAX_INLINE i32 bits(f32 a) noexcept { return _mm256_castps_si256(a); }
  static REPARAM_GUMBEL_MAX_INLINE f32 set1(float v) noexcept { return _mm256_set1_ps(v); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul(f32 a, f32 b) noexcept { return _mm256_mul_ps(a, b); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul_add(f32 a, f32 b, f32 c) noexcept {
#if defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return _mm256_add_ps(_mm256_mul_ps(a, b), c);
#endif
  }
  static REPARAM_GUMBEL_MAX_INLINE f32 minus_product(f32 x, f32 a, f32 b) noexcept {
    return _mm256_sub_ps(x, _mm256_mul_ps(a, b));
  }
  static REPARAM_GUMBEL_MAX_INLINE unsigned at_least(f32 a, f32 b) noexcept {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)));
  }
};
#endif

#if REPARAM_HAS_GUMBEL_MAX_SSE2
struct sse2_isa {
  using f32 = __m128;
  using i32 = __m128i;
  static constexpr index width = 4;

  static REPARAM_GUMBEL_MAX_INLINE f32 load(const float* p) noexcept { return _mm_loadu_ps(p); }
  static REPARAM_GUMBEL_MAX_INLINE f32 load(const double* p) noexcept {
    return _mm_movelh_ps(_mm_cvtpd_ps(_mm_loadu_pd(p)), _mm_cvtpd_ps(_mm_loadu_pd(p + 2)));
  }
  /// The high words of 4 consecutive columns (shufps of the even words of two loads).
  static REPARAM_GUMBEL_MAX_INLINE i32 high_words(const std::uint32_t* words) noexcept {
    const __m128 a = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(words)));
    const __m128 b = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(words + 4)));
    return _mm_castps_si128(_mm_shuffle_ps(a, b, 0x88));
  }
  static REPARAM_GUMBEL_MAX_INLINE i32 halve(i32 a) noexcept { return _mm_srli_epi32(a, 1); }
  static REPARAM_GUMBEL_MAX_INLINE f32 to_float(i32 a) noexcept { return _mm_cvtepi32_ps(a); }
  static REPARAM_GUMBEL_MAX_INLINE i32 bits(f32 a) noexcept { return _mm_castps_si128(a); }
  static REPARAM_GUMBEL_MAX_INLINE f32 set1(float v) noexcept { return _mm_set1_ps(v); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul(f32 a, f32 b) noexcept { return _mm_mul_ps(a, b); }
  static REPARAM_GUMBEL_MAX_INLINE f32 mul_add(f32 a, f32 b, f32 c) noexcept {
    return _mm_add_ps(_mm_mul_ps(a, b), c);
  }
  static REPARAM_GUMBEL_MAX_INLINE f32 minus_product(f32 x, f32 a, f32 b) noexcept {
    return _mm_sub_ps(x, _mm_mul_ps(a, b));
  }
  static REPARAM_GUMBEL_MAX_INLINE unsigned at_least(f32 a, f32 b) noexcept {
    return static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(a, b)));
  }
};
#endif

/// `Isa::width` classes per test, the formulas of scalar_ops.
template <class Isa>
struct vector_ops : Isa {
  using f32 = typename Isa::f32;

  /// lower_exponential of `Isa::width` consecutive columns.
  static REPARAM_GUMBEL_MAX_INLINE f32 lower_exponential(const std::uint32_t* words) noexcept {
    const f32 w =
        Isa::mul(Isa::to_float(Isa::halve(Isa::high_words(words))), Isa::set1(two_to_minus_31));
    const f32 inner = Isa::mul_add(w, Isa::set1(one_third), Isa::set1(0.5f));
    return Isa::mul(w, Isa::mul_add(w, inner, Isa::set1(1.0f)));
  }

  template <class T>
  static REPARAM_GUMBEL_MAX_INLINE unsigned logit_survivors(const T* logits,
                                                            const std::uint32_t* words,
                                                            float inv_tau,
                                                            float threshold) noexcept {
    const f32 e = Isa::to_float(Isa::bits(lower_exponential(words)));
    const f32 x = Isa::mul(Isa::load(logits), Isa::set1(inv_tau));
    return Isa::at_least(Isa::minus_product(x, e, Isa::set1(bound_slope)), Isa::set1(threshold));
  }

  template <class T>
  static REPARAM_GUMBEL_MAX_INLINE unsigned prob_survivors(const T* probs,
                                                           const std::uint32_t* words,
                                                           float scale) noexcept {
    return Isa::at_least(Isa::load(probs), Isa::mul(lower_exponential(words), Isa::set1(scale)));
  }
};

template <gumbel_max_path Path>
struct ops_for {
  using type = scalar_ops;
};
#if REPARAM_HAS_GUMBEL_MAX_AVX512
template <>
struct ops_for<gumbel_max_path::avx512> {
  using type = vector_ops<avx512_isa>;
};
#endif
#if REPARAM_HAS_GUMBEL_MAX_AVX2
template <>
struct ops_for<gumbel_max_path::avx2> {
  using type = vector_ops<avx2_isa>;
};
#endif
#if REPARAM_HAS_GUMBEL_MAX_SSE2
template <>
struct ops_for<gumbel_max_path::sse2> {
  using type = vector_ops<sse2_isa>;
};
#endif

// ---- row passes without noise: validation, maximum, counts (xsimd, or scalar on generic) ----

template <class Arch>
inline constexpr bool is_vector_path = gumbel_max_path_of<Arch>() != gumbel_max_path::generic;

/// Largest entry of data[0, n) (-inf for n = 0; no NaN). Four accumulators hide the latency of
/// the max chain.
template <class Arch, class T>
T range_max(const T* data, index n) noexcept {
  T best = -std::numeric_limits<T>::infinity();
  index c = 0;
  if constexpr (is_vector_path<Arch>) {
    using batch = xsimd::batch<T, simd_arch_t<Arch>>;
    constexpr auto width = static_cast<index>(batch::size);
    if (n >= width) {
      batch acc0 = batch::load_unaligned(data);
      batch acc1 = acc0;
      batch acc2 = acc0;
      batch acc3 = acc0;
      for (c = width; c + 4 * width <= n; c += 4 * width) {
        acc0 = xsimd::max(acc0, batch::load_unaligned(data + c));
        acc1 = xsimd::max(acc1, batch::load_unaligned(data + c + width));
        acc2 = xsimd::max(acc2, batch::load_unaligned(data + c + 2 * width));
        acc3 = xsimd::max(acc3, batch::load_unaligned(data + c + 3 * width));
      }
      for (; c + width <= n; c += width) {
        acc0 = xsimd::max(acc0, batch::load_unaligned(data + c));
      }
      alignas(64) T lanes[batch::size];
      xsimd::max(xsimd::max(acc0, acc1), xsimd::max(acc2, acc3)).store_aligned(lanes);
      for (const T lane : lanes) {
        best = lane > best ? lane : best;
      }
    }
  }
  for (; c < n; ++c) {
    best = data[c] > best ? data[c] : best;
  }
  return best;
}

/// The first c < n with hit(data[c]) (n if there is none); `hit` takes a T or a batch of T.
/// Four vectors per test.
template <class Arch, class T, class Hit>
index find_first(const T* data, index n, Hit hit) noexcept {
  index c = 0;
  if constexpr (is_vector_path<Arch>) {
    using batch = xsimd::batch<T, simd_arch_t<Arch>>;
    constexpr auto width = static_cast<index>(batch::size);
    while (c + 4 * width <= n && !xsimd::any(hit(batch::load_unaligned(data + c)) |
                                             hit(batch::load_unaligned(data + c + width)) |
                                             hit(batch::load_unaligned(data + c + 2 * width)) |
                                             hit(batch::load_unaligned(data + c + 3 * width)))) {
      c += 4 * width;
    }
  }
  while (c < n && !hit(data[c])) {
    ++c;
  }
  return c;
}

/// Whether some entry of data[0, n) is >= limit.
template <class Arch, class T>
bool any_at_least(const T* data, index n, T limit) noexcept {
  return find_first<Arch>(
             data, n, [limit](const auto& x) { return x >= std::decay_t<decltype(x)>(limit); }) < n;
}

/// First index of `value` in data[0, n) (it occurs).
template <class Arch, class T>
index first_index_of(const T* data, index n, T value) noexcept {
  return find_first<Arch>(data, n,
                          [value](const auto& x) { return x == std::decay_t<decltype(x)>(value); });
}

/// The largest T <= y.
template <class T>
T at_most(double y) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    return float_at_most(y);
  } else {
    return y;
  }
}

/// counts[j] += the number of entries x of the full vectors of data[0, n) with hits(x)[j], j < N
/// (hits takes a batch of T and returns N batch_bools); returns where the vectors end (the scalar
/// tail is the caller's). Lane sums in T are exact below 2^24 (float); flushed every 2^20
/// vectors.
template <class Arch, std::size_t N, class T, class Hits>
index count_vector_hits(const T* data, index n, index (&counts)[N], Hits hits) noexcept {
  using batch = xsimd::batch<T, simd_arch_t<Arch>>;
  constexpr auto width = static_cast<index>(batch::size);
  const batch one(T(1));
  const batch zero(T(0));
  constexpr index flush = index{1} << 20;
  index c = 0;
  while (c + width <= n) {
    std::array<batch, N> sums;
    sums.fill(zero);
    const index end = c + std::min((n - c) / width, flush) * width;
    for (; c < end; c += width) {
      const auto hit = hits(batch::load_unaligned(data + c));
      for (std::size_t j = 0; j < N; ++j) {
        sums[j] += xsimd::select(hit[j], one, zero);
      }
    }
    for (std::size_t j = 0; j < N; ++j) {
      counts[j] += static_cast<index>(xsimd::hadd(sums[j]));
    }
  }
  return c;
}

/// counts[j] = number of entries >= thresholds[j], j < 4.
template <class Arch, class T>
void count_at_least(const T* data, index n, const T (&thresholds)[4], index (&counts)[4]) noexcept {
  for (index& count : counts) {
    count = 0;
  }
  index c = 0;
  if constexpr (is_vector_path<Arch>) {
    using batch = xsimd::batch<T, simd_arch_t<Arch>>;
    const batch t0(thresholds[0]);
    const batch t1(thresholds[1]);
    const batch t2(thresholds[2]);
    const batch t3(thresholds[3]);
    c = count_vector_hits<Arch>(data, n, counts, [&](const batch& x) {
      return std::array{x >= t0, x >= t1, x >= t2, x >= t3};
    });
  }
  for (; c < n; ++c) {
    for (int j = 0; j < 4; ++j) {
      counts[j] += data[c] >= thresholds[j] ? 1 : 0;
    }
  }
}

/// Calls visit(c) for every c < n with data[c] >= threshold, in increasing order; stops early
/// when visit returns false.
template <class Arch, class T, class Visit>
void for_each_at_least(const T* data, index n, T threshold, Visit visit) noexcept {
  index c = 0;
  if constexpr (is_vector_path<Arch>) {
    using batch = xsimd::batch<T, simd_arch_t<Arch>>;
    constexpr auto width = static_cast<index>(batch::size);
    const batch t(threshold);
    for (; c + width <= n; c += width) {
      if (!xsimd::any(batch::load_unaligned(data + c) >= t)) {
        continue;
      }
      for (index i = c; i < c + width; ++i) {
        if (data[i] >= threshold && !visit(i)) {
          return;
        }
      }
    }
  }
  for (; c < n; ++c) {
    if (data[c] >= threshold && !visit(c)) {
      return;
    }
  }
}

/// Number of entries of data[0, n) with `is_counted`; sets `has_invalid` when an entry is
/// `is_invalid` (vector predicates on batches, scalar ones on T).
template <class Arch, class T, class VectorPredicates, class ScalarPredicates>
index count_valid(const T* data, index n, bool& has_invalid, VectorPredicates vector_predicates,
                  ScalarPredicates scalar_predicates) noexcept {
  index counted = 0;
  bool invalid = false;
  index c = 0;
  if constexpr (is_vector_path<Arch>) {
    using batch = xsimd::batch<T, simd_arch_t<Arch>>;
    auto bad = batch(T(0)) != batch(T(0));
    index sums[1] = {0};
    c = count_vector_hits<Arch>(data, n, sums, [&](const batch& x) {
      const auto [is_counted, is_invalid] = vector_predicates(x);
      bad = bad | is_invalid;
      return std::array{is_counted};
    });
    counted = sums[0];
    invalid = xsimd::any(bad);
  }
  for (; c < n; ++c) {
    const auto [is_counted, is_invalid] = scalar_predicates(data[c]);
    counted += is_counted ? 1 : 0;
    invalid = invalid || is_invalid;
  }
  has_invalid = invalid;
  return counted;
}

// ---- the two problems: logits (value l / tau + g) and probabilities (value p / E) ----

template <class T>
struct logit_problem {
  using scalar = T;
  const T* data;
  index cols;
  double tau;
  gumbel_noise_key key;
  std::uint64_t row;
  double inv_tau = 1.0 / tau;
  float inv_tau_f = static_cast<float>(1.0 / tau);

  static bool is_masked(T x) noexcept { return x == -std::numeric_limits<T>::infinity(); }
  double value_of_uniform(index c, double v) const noexcept {
    return perturbed_logit_of_uniform(data[c], tau, v);
  }
  double value(index c) const noexcept {
    return gumbel_perturbed_logit(data[c], tau, key, row, static_cast<std::uint64_t>(c));
  }
  /// The test parameter for a ranking whose k-th value is `best` (-inf while not full): every
  /// class whose value can reach `best` passes. A class reaching best has x + 127 ln2 - c bits
  /// >= best - 2^-51 (|x| + 40) - 2^-20 (c = ln2 / 2^23, bits = bits(float(P)), rounding of
  /// P, of the reference's logs and sum); the float test value t = float(l) float(1 / tau) -
  /// c float(bits) is within 4 2^-24 (|x| + 180) + 1e-5 of x - c bits. Such a class has |x| <=
  /// |best| + 64 (x <= x_max <= best + 3.7 as every g >= -3.7, and x >= best - 36.8), so the
  /// margin 2^-18 (|best| + 256) covers both with room to spare. Overflow to +-inf in float only
  /// ever lets more classes through.
  float threshold(double best) const noexcept {
    if (!std::isfinite(best)) {
      return best > 0 ? std::numeric_limits<float>::infinity()
                      : -std::numeric_limits<float>::infinity();
    }
    const double margin = (std::abs(best) + 256.0) * (1.0 / 262144.0);
    return float_at_most(best - bound_offset - margin);
  }
  template <class Ops>
  REPARAM_GUMBEL_MAX_INLINE unsigned survivors(index c, const std::uint32_t* words,
                                               float threshold_value) const noexcept {
    return Ops::logit_survivors(data + c, words, inv_tau_f, threshold_value);
  }
  /// A logit limit for chunks: no class whose logit is below it can reach `best` (finite):
  /// l / tau + g < (limit / tau)(1 + 2^-52) + 36.75 <= best - margin.
  T hopeless_below(double best) const noexcept {
    const double margin = (std::abs(best) + 256.0) * (1.0 / 262144.0);
    return at_most<T>((best - max_gumbel - margin) * tau);
  }
  /// Logit threshold `nats` below the largest logit (masked classes stay below it).
  T seed_threshold(T max_value, double nats) const noexcept {
    const double t = static_cast<double>(max_value) - nats * tau;
    const auto lowest = static_cast<double>(std::numeric_limits<T>::lowest());
    return static_cast<T>(std::max(t, lowest));
  }
  static constexpr bool is_fast_tau(double tau_value) noexcept {
    return tau_value >= min_fast_tau && tau_value <= max_fast_tau;
  }
};

template <class T>
struct prob_problem {
  using scalar = T;
  const T* data;
  index cols;
  gumbel_noise_key key;
  std::uint64_t row;

  static bool is_masked(T x) noexcept { return !(x > T(0)); }
  double value_of_uniform(index c, double v) const noexcept {
    return perturbed_probability_of_uniform(data[c], v);
  }
  double value(index c) const noexcept {
    return gumbel_perturbed_probability(data[c], key, row, static_cast<std::uint64_t>(c));
  }
  /// p / E >= best needs p >= best E (1 - 2^-53) >= best P (1 - 2^-20) (P's float rounding
  /// is below 2^-21), so p >= float(P) * s with s <= best (1 - 2^-18) is necessary; the float
  /// product and the conversion of p round monotonically. 0 (all pass) while not full.
  float threshold(double best) const noexcept {
    if (!(best > 0.0)) {
      return 0.0f;
    }
    const float s = float_at_most(best * (1.0 - 1.0 / 262144.0));
    return std::min(s, std::numeric_limits<float>::max());
  }
  template <class Ops>
  REPARAM_GUMBEL_MAX_INLINE unsigned survivors(index c, const std::uint32_t* words,
                                               float threshold_value) const noexcept {
    return Ops::prob_survivors(data + c, words, threshold_value);
  }
  /// A probability limit for chunks: p / E <= p max_inverse_exponential < best below it.
  T hopeless_below(double best) const noexcept {
    return at_most<T>(best / max_inverse_exponential * (1.0 - 1.0 / 1048576.0));
  }
  /// Probability threshold `nats` below the largest one (zero probabilities stay below it).
  T seed_threshold(T max_value, double nats) const noexcept {
    const double t = static_cast<double>(max_value) * std::exp(-nats);
    const auto smallest = static_cast<double>(std::numeric_limits<T>::denorm_min());
    return static_cast<T>(std::max(t, smallest));
  }
};

/// The ranking of one row (see the file comment); returns how many classes it holds (<= k).
template <class Arch, class Problem>
index rank_row(const Problem& problem, index k, index* indices, double* values,
               const gumbel_rank* after) noexcept {
  using T = typename Problem::scalar;
  using ops = typename ops_for<gumbel_max_path_of<Arch>()>::type;
  constexpr T infinity = std::numeric_limits<T>::infinity();
  const T* data = problem.data;
  const index cols = problem.cols;

  index count = 0;
  float threshold = problem.threshold(-std::numeric_limits<double>::infinity());
  const auto insert = [&](index c, double value) {
    count = reference::detail::insert_ranked(value, c, k, count, indices, values);
    if (count == k) {
      threshold = problem.threshold(values[k - 1]);
    }
  };
  // A row of one chunk gets its words once, before the seeding, which then reads them too;
  // longer rows seed with the scalar noise of the few seeded classes.
  alignas(64) std::uint32_t words[2 * chunk_cols];
  const bool is_one_chunk = cols <= chunk_cols;
  if (is_one_chunk && cols > 0) {
    gumbel_noise_words<Arch>(problem.key, problem.row, 0, (cols + 1) / 2, words);
  }
  const auto seed_value = [&](index c) {
    return is_one_chunk
               ? problem.value_of_uniform(c, uniform_open01_double(words[2 * c], words[2 * c + 1]))
               : problem.value(c);
  };

  // 1. Seeds: a class c with data[c] >= seed_all, or with data[c] >= seed_low and c < seed_end.
  T seed_all = infinity;
  T seed_low = infinity;
  index seed_end = 0;
  if (after == nullptr && cols > 0) {
    const T max_value = range_max<Arch>(data, cols);
    const bool has_class = !Problem::is_masked(max_value);  // else nothing to seed or find
    if (has_class && k == 1) {
      const index first = first_index_of<Arch>(data, cols, max_value);
      seed_low = max_value;
      seed_end = first + 1;
      insert(first, seed_value(first));
    } else if (has_class) {
      constexpr double ladder[4] = {1.0, 2.0, 4.0, 8.0};
      T levels[4];
      for (int j = 0; j < 4; ++j) {
        levels[j] = problem.seed_threshold(max_value, ladder[j]);
      }
      index counts[4];
      count_at_least<Arch>(data, cols, levels, counts);
      int j = 0;
      while (j < 4 && counts[j] < k) {
        ++j;
      }
      index quota = 0;  // classes taken from [seed_low, seed_all) in column order
      if (j == 4) {
        seed_all = seed_low = levels[3];
      } else if (counts[j] <= 2 * k) {
        seed_all = seed_low = levels[j];
      } else {
        seed_all = j == 0 ? infinity : levels[j - 1];
        seed_low = levels[j];
        quota = k - (j == 0 ? 0 : counts[j - 1]);
      }
      // Once the quota is taken, only the classes >= seed_all remain to be seeded.
      index rest = cols;
      for_each_at_least<Arch>(data, cols, seed_low, [&](index c) {
        if (data[c] >= seed_all) {
          insert(c, seed_value(c));
        } else if (quota > 0) {
          insert(c, seed_value(c));
          seed_end = c + 1;
          if (--quota == 0) {
            rest = c + 1;
            return false;
          }
        }
        return true;
      });
      if (rest < cols && seed_all != infinity) {
        for_each_at_least<Arch>(data + rest, cols - rest, seed_all, [&](index c) {
          insert(rest + c, seed_value(rest + c));
          return true;
        });
      }
    }
  }
  const auto is_seeded = [&](index c) {
    const T x = data[c];
    return x >= seed_all || (x >= seed_low && c < seed_end);
  };

  // 2-3. Scan: pruned classes never reach the k-th value; survivors get the exact value.
  const auto on_survivor = [&](index c, std::uint32_t high, std::uint32_t low) {
    if (Problem::is_masked(data[c]) || is_seeded(c)) {
      return;
    }
    const double value = problem.value_of_uniform(c, uniform_open01_double(high, low));
    if (after != nullptr && !gumbel_ranks_before(after->value, after->col, {value, c})) {
      return;
    }
    insert(c, value);
  };
  for (index start = 0; start < cols; start += chunk_cols) {
    const index n = std::min(chunk_cols, cols - start);
    if (count == k && std::isfinite(values[k - 1]) &&
        !any_at_least<Arch>(data + start, n, problem.hopeless_below(values[k - 1]))) {
      continue;
    }
    if (!is_one_chunk) {
      gumbel_noise_words<Arch>(problem.key, problem.row, static_cast<std::uint32_t>(start / 2),
                               (n + 1) / 2, words);
    }
    index i = 0;
    for (; i + ops::width <= n; i += ops::width) {
      unsigned mask = problem.template survivors<ops>(start + i, words + 2 * i, threshold);
      while (mask != 0) {
        const auto b = static_cast<index>(lowest_bit(mask));
        mask &= mask - 1;
        on_survivor(start + i + b, words[2 * (i + b)], words[2 * (i + b) + 1]);
      }
    }
    for (; i < n; ++i) {
      if (problem.template survivors<scalar_ops>(start + i, words + 2 * i, threshold) != 0) {
        on_survivor(start + i, words[2 * i], words[2 * i + 1]);
      }
    }
  }
  return count;
}

}  // namespace detail::gumbel_max

/// Same contract as reference::gumbel_top_k_row (bitwise the same indices and values), by
/// pruning; see the file comment for the method and its cost. No allocation (2 KiB of stack);
/// stateless, so concurrent calls are safe.
template <class Arch, class T>
index gumbel_top_k_row(const T* logits, index cols, double tau, gumbel_noise_key key,
                       std::uint64_t row, index k, index* indices, double* values,
                       const gumbel_rank* after = nullptr) noexcept {
  using problem = detail::gumbel_max::logit_problem<T>;
  if (!problem::is_fast_tau(tau)) {
    return reference::gumbel_top_k_row(logits, cols, tau, key, row, k, indices, values, after);
  }
  return detail::gumbel_max::rank_row<Arch>(problem{logits, cols, tau, key, row}, k, indices,
                                            values, after);
}

/// Same contract as reference::top_k_from_probs_row, by pruning. No allocation.
template <class Arch, class T>
index top_k_from_probs_row(const T* probs, index cols, gumbel_noise_key key, std::uint64_t row,
                           index k, index* indices, double* values,
                           const gumbel_rank* after = nullptr) noexcept {
  using problem = detail::gumbel_max::prob_problem<T>;
  return detail::gumbel_max::rank_row<Arch>(problem{probs, cols, key, row}, k, indices, values,
                                            after);
}

/// Same contract as reference::gumbel_max_row (bitwise the same index). No allocation.
template <class Arch, class T>
index gumbel_max_row(const T* logits, index cols, double tau, gumbel_noise_key key,
                     std::uint64_t row) noexcept {
  index best = -1;
  double value = 0.0;
  return gumbel_top_k_row<Arch>(logits, cols, tau, key, row, 1, &best, &value) == 1 ? best : -1;
}

/// Same contract as reference::sample_from_probs_row. No allocation.
template <class Arch, class T>
index sample_from_probs_row(const T* probs, index cols, gumbel_noise_key key,
                            std::uint64_t row) noexcept {
  index best = -1;
  double value = 0.0;
  return top_k_from_probs_row<Arch>(probs, cols, key, row, 1, &best, &value) == 1 ? best : -1;
}

/// Validation scan of a row of logits: returns the number of finite entries and sets
/// `has_invalid` if one is NaN or +inf. Vectorized; no allocation.
template <class Arch, class T>
index count_finite_logits(const T* logits, index cols, bool& has_invalid) noexcept {
  constexpr T lowest = std::numeric_limits<T>::lowest();
  constexpr T highest = std::numeric_limits<T>::max();
  return detail::gumbel_max::count_valid<Arch>(
      logits, cols, has_invalid,
      [](const auto& x) {
        using batch = std::decay_t<decltype(x)>;
        return std::make_pair(x >= batch(lowest), !(x <= batch(highest)));
      },
      [](T x) { return std::make_pair(x >= lowest, !(x <= highest)); });
}

/// Validation scan of a row of probabilities: returns the number of positive entries and sets
/// `has_invalid` if one is negative, NaN or infinite. Vectorized; no allocation.
template <class Arch, class T>
index count_positive_probs(const T* probs, index cols, bool& has_invalid) noexcept {
  constexpr T highest = std::numeric_limits<T>::max();
  return detail::gumbel_max::count_valid<Arch>(
      probs, cols, has_invalid,
      [](const auto& x) {
        using batch = std::decay_t<decltype(x)>;
        return std::make_pair(x > batch(T(0)), !(x >= batch(T(0)) && x <= batch(highest)));
      },
      [](T x) { return std::make_pair(x > T(0), !(x >= T(0) && x <= highest)); });
}

}  // namespace reparam::kernels::simd

#endif  // REPARAM_KERNELS_SIMD_GUMBEL_MAX_HPP
