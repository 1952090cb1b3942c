// SPDX-License-Identifier: Apache-2.0
// Vectorized Gumbel noise (the definition is kernels/reference/gumbel_noise.hpp): the Philox words
// of a run of blocks of one row, bit-identical to the reference, and the Gumbel fill behind
// gumbel::fill_gumbel_rows and the samplers.
//
// Philox4x32-10 runs in SoA form, one 32-bit vector lane per block (AVX-512: 16 blocks, AVX2: 8):
// the blocks of one call differ only in counter word 0, so words 1..3 and round 0's second
// product are per-row scalars. The 32x32->64 products are vpmuludq of the even lanes and of the
// odd lanes moved down, merged back into a high-word and a low-word vector. Lane 4 k + e
// (128-bit lane k, element e) computes block 4 e + k (AVX-512) or 2 e + k (AVX2), so the in-lane
// 4x4 transpose of vpunpck{l,h}{dq,qdq} leaves the blocks in memory order with no cross-lane
// shuffle; the fill pairs each column's two words into a 64-bit lane the same way.
//
//   lane (AVX-512)   0  1  2  3 | 4  5  6  7 | 8  9 10 11 | 12 13 14 15
//   block            0  4  8 12 | 1  5  9 13 | 2  6 10 14 |  3  7 11 15
//
// Uniform: the column's words h:l give j = (h:l) >> 12 (52 bits), and the kernel builds
// w = 1 - v = (2^52 - 1 - j + 0.5) 2^-52 directly: the double with exponent 0 and mantissa
// 2^52 - 1 - j is 1 + (2^52 - 1 - j) 2^-52; subtracting 1 - 2^-53 is exact. w is exactly the
// reference's 1 - v, so log(w) = log1p(-v) and, w being exact, loses nothing near w = 1 (the
// upper tail). E = -log(w), g = -log(E), both with the log below, all in double.
//
// log: fdlibm's e_log.c scheme (x = 2^k m, m in [sqrt2/2, sqrt2), log(m) = f - (hfsq -
// s (hfsq + R(s^2))), s = f / (2 + f)) without its special cases, since the kernels only take
// logs of [2^-53, 37]. AVX-512 splits x with vgetmantpd/vgetexppd and replaces the 16-cycle
// vdivpd by vrcp14pd + a Newton step + a residual correction; AVX2 keeps vdivpd. Measured over
// 10^7 arguments: at most 0.79 ulp from the exact log (std::log 0.51, xsimd::log 0.75), and g
// within 2 (ulp(g) + 2^-53) of the reference (which is itself 1.3 such units from the exact g;
// near g = 0 an ulp of E is an absolute 1.1e-16 of g, hence the absolute term). xsimd::log gives
// the same accuracy at half the speed (vdivpd, special-case selects). T = float rounds the double
// once (vcvtpd2ps, round to nearest even like static_cast).
//
// Columns past the last full group of a row (32 columns on AVX-512, 16 on AVX2) are computed as
// one more full group into a stack buffer and copied, so the value at (row, col) never depends
// on the width of the matrix. Other ISAs (sse2, neon, ...) run the scalar reference.
#ifndef REPARAM_KERNELS_SIMD_GUMBEL_NOISE_HPP
#define REPARAM_KERNELS_SIMD_GUMBEL_NOISE_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define REPARAM_HAS_GUMBEL_NOISE_AVX512 1
#else
#define REPARAM_HAS_GUMBEL_NOISE_AVX512 0
#endif
#if defined(__AVX2__)
#define REPARAM_HAS_GUMBEL_NOISE_AVX2 1
#else
#define REPARAM_HAS_GUMBEL_NOISE_AVX2 0
#endif

// The helpers of the inner loops must be inlined for their vectors to stay in registers.
#if defined(__GNUC__)
#define REPARAM_GUMBEL_NOISE_INLINE inline __attribute__((always_inline))
#else
#define REPARAM_GUMBEL_NOISE_INLINE inline
#endif

namespace reparam::kernels::simd {

/// Code paths of the Gumbel noise kernels, worst to best.
enum class gumbel_noise_path { scalar, avx2, avx512 };

/// The path an instantiation for `Arch` runs (its compile flags must enable that ISA): avx512
/// for xsimd::avx512f and its descendants (avx512bw, reparam::avx512vbmi_vnni, ...), avx2 for
/// xsimd::avx2 and fma3<avx2>, the scalar reference otherwise (sse2, neon, ...).
template <class Arch>
constexpr gumbel_noise_path gumbel_noise_path_of() noexcept {
  using arch = simd_arch_t<Arch>;
  if constexpr (REPARAM_HAS_GUMBEL_NOISE_AVX512 != 0 && std::is_base_of_v<xsimd::avx512f, arch>) {
    return gumbel_noise_path::avx512;
  } else if constexpr (REPARAM_HAS_GUMBEL_NOISE_AVX2 != 0 && std::is_base_of_v<xsimd::avx2, arch>) {
    return gumbel_noise_path::avx2;
  } else {
    return gumbel_noise_path::scalar;
  }
}

namespace detail::gumbel_noise {

/// The 10 round keys of Philox4x32-10 for `seed`: (k0[r], k1[r]) is the key of round r.
struct round_keys {
  std::uint32_t k0[10];
  std::uint32_t k1[10];
};

inline round_keys make_round_keys(std::uint64_t seed) noexcept {
  round_keys out{};
  auto k0 = static_cast<std::uint32_t>(seed);
  auto k1 = static_cast<std::uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    out.k0[r] = k0;
    out.k1[r] = k1;
    k0 += reparam::detail::philox_w0;
    k1 += reparam::detail::philox_w1;
  }
  return out;
}

/// 2^-53 below 1: subtracting it from 1 + m 2^-52 gives (m + 0.5) 2^-52 exactly.
inline constexpr double one_minus_half_ulp = 1.0 - 1.0 / 9007199254740992.0;
/// XOR with (h:l) >> 12: flips the 52 mantissa bits (m = 2^52 - 1 - j) and sets exponent 0.
inline constexpr std::uint64_t complement_to_one = 0x3FFFFFFFFFFFFFFFull;

// log(1 + f) = f - (hfsq - s (hfsq + R(s^2))) with s = f / (2 + f), hfsq = f^2 / 2 and
// R(z) ~ 2z/3 + 2z^2/5 + ... (the series of 2 atanh(s) - 2s), for f in [sqrt2/2 - 1, sqrt2 - 1]:
// the scheme and the minimax coefficients Lg1..Lg7 of fdlibm's e_log.c (as in xsimd's log).
inline constexpr double log_lg1 = 6.666666666666735130e-01;
inline constexpr double log_lg2 = 3.999999999940941908e-01;
inline constexpr double log_lg3 = 2.857142874366239149e-01;
inline constexpr double log_lg4 = 2.222219843214978396e-01;
inline constexpr double log_lg5 = 1.818357216161805012e-01;
inline constexpr double log_lg6 = 1.531383769920937332e-01;
inline constexpr double log_lg7 = 1.479819860511658591e-01;
/// ln 2 = ln2_hi + ln2_lo; ln2_hi has 32 significant bits, so k ln2_hi is exact for |k| < 2^20.
inline constexpr double ln2_hi = 6.93147180369123816490e-01;
inline constexpr double ln2_lo = 1.90821492927058770002e-10;
inline constexpr double sqrt2 = 1.4142135623730951;

/// The lane-independent part of the first Philox round for one row: counter words 1..3 (step,
/// row_lo, row_hi) are the same in every block, so round 0's product of word 2 is a scalar.
struct row_start {
  std::uint32_t x0;      ///< word 0 after round 0: hi(m1 * row_lo) ^ step ^ key0
  std::uint32_t x1;      ///< word 1 after round 0: lo(m1 * row_lo)
  std::uint32_t x2_xor;  ///< word 2 after round 0 is hi(m0 * counter) ^ x2_xor (row_hi ^ key1)
};

inline row_start make_row_start(const round_keys& keys, std::uint32_t step,
                                std::uint64_t row) noexcept {
  const std::uint64_t p1 =
      std::uint64_t{reparam::detail::philox_m1} * static_cast<std::uint32_t>(row);
  return {static_cast<std::uint32_t>(p1 >> 32) ^ step ^ keys.k0[0], static_cast<std::uint32_t>(p1),
          static_cast<std::uint32_t>(row >> 32) ^ keys.k1[0]};
}

/// Philox4x32-10 state of one group: x[j] lane l = word j of block base + Isa::block_offsets()[l].
template <class Isa>
struct block_state {
  typename Isa::u32 x[4];
};

/// Philox4x32-10 of the group of blocks starting at `base` of the row of `start` (same rounds as
/// reparam::philox4x32_10, vectorized over the blocks).
template <class Isa>
REPARAM_GUMBEL_NOISE_INLINE block_state<Isa> philox(const round_keys& keys, const row_start& start,
                                                    std::uint32_t base) noexcept {
  using u32 = typename Isa::u32;
  const u32 m0 = Isa::set1(reparam::detail::philox_m0);
  const u32 m1 = Isa::set1(reparam::detail::philox_m1);
  u32 hi0;
  u32 lo0;
  Isa::mul_hi_lo(Isa::add(Isa::set1(base), Isa::block_offsets()), m0, hi0, lo0);
  u32 x0 = Isa::set1(start.x0);
  u32 x1 = Isa::set1(start.x1);
  u32 x2 = Isa::xor2(hi0, Isa::set1(start.x2_xor));
  u32 x3 = lo0;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 9
#endif
  for (int r = 1; r < 10; ++r) {
    u32 hi1;
    u32 lo1;
    Isa::mul_hi_lo(x0, m0, hi0, lo0);
    Isa::mul_hi_lo(x2, m1, hi1, lo1);
    x0 = Isa::xor3(hi1, x1, Isa::set1(keys.k0[r]));
    x1 = lo1;
    x2 = Isa::xor3(hi0, x3, Isa::set1(keys.k1[r]));
    x3 = lo0;
  }
  return {{x0, x1, x2, x3}};
}

/// log(x) for positive normal finite x (no special cases: 0, subnormals, inf and NaN are outside
/// the kernels' domain [2^-53, 37]): x = 2^k m with m in [sqrt2/2, sqrt2), then fdlibm's log(m).
/// Within 1 ulp like fdlibm (Isa::quotient is a correctly rounded or 2^-56-accurate division).
template <class Isa>
REPARAM_GUMBEL_NOISE_INLINE typename Isa::f64 log_normal(typename Isa::f64 x) noexcept {
  using f64 = typename Isa::f64;
  f64 k;
  f64 m;
  Isa::split(x, k, m);
  const f64 f = Isa::sub(m, Isa::set1(1.0));  // exact (Sterbenz)
  const f64 s = Isa::quotient(f, Isa::add(f, Isa::set1(2.0)));
  const f64 hfsq = Isa::mul(Isa::set1(0.5), Isa::mul(f, f));
  const f64 z = Isa::mul(s, s);
  const f64 w = Isa::mul(z, z);
  const f64 t1 = Isa::mul(
      w, Isa::fma(w, Isa::fma(w, Isa::set1(log_lg6), Isa::set1(log_lg4)), Isa::set1(log_lg2)));
  const f64 t2 = Isa::mul(
      z,
      Isa::fma(w,
               Isa::fma(w, Isa::fma(w, Isa::set1(log_lg7), Isa::set1(log_lg5)), Isa::set1(log_lg3)),
               Isa::set1(log_lg1)));
  const f64 r = Isa::add(t2, t1);
  const f64 tail = Isa::fma(s, Isa::add(hfsq, r), Isa::mul(k, Isa::set1(ln2_lo)));
  return Isa::fma(k, Isa::set1(ln2_hi), Isa::add(Isa::sub(tail, hfsq), f));
}

/// Gumbel values of the columns whose word pairs (high << 32 | low) are the 64-bit lanes of
/// `pairs`: w = 1 - v exactly, E = -log(w), g = -log(E) (negations flip the sign bit, as the
/// reference's unary minus does).
template <class Isa>
REPARAM_GUMBEL_NOISE_INLINE typename Isa::f64 gumbel_of_pairs(typename Isa::u32 pairs) noexcept {
  const typename Isa::f64 w =
      Isa::sub(Isa::from_bits(Isa::xor2(Isa::srli64_12(pairs), Isa::set1_64(complement_to_one))),
               Isa::set1(one_minus_half_ulp));
  return Isa::negate(log_normal<Isa>(Isa::negate(log_normal<Isa>(w))));
}

#if REPARAM_HAS_GUMBEL_NOISE_AVX512

/// AVX-512F pieces: 16 blocks (32 columns) per group.
struct avx512_isa {
  using u32 = __m512i;
  using f64 = __m512d;
  static constexpr index group_blocks = 16;

  static REPARAM_GUMBEL_NOISE_INLINE u32 set1(std::uint32_t v) noexcept {
    return _mm512_set1_epi32(static_cast<int>(v));
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 set1_64(std::uint64_t v) noexcept {
    return _mm512_set1_epi64(static_cast<long long>(v));
  }
  /// Lane 4 k + e computes block 4 e + k of the group (see the file comment).
  static REPARAM_GUMBEL_NOISE_INLINE u32 block_offsets() noexcept {
    return _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 add(u32 a, u32 b) noexcept {
    return _mm512_add_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 xor3(u32 a, u32 b, u32 c) noexcept {
    return _mm512_ternarylogic_epi32(a, b, c, 0x96);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 xor2(u32 a, u32 b) noexcept {
    return _mm512_xor_si512(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 srli64_12(u32 a) noexcept {
    return _mm512_srli_epi64(a, 12);
  }
  /// hi:lo = a * m per 32-bit lane (m broadcast): vpmuludq of the even lanes and of the odd
  /// lanes moved down (vpshufd, port 5, leaving port 0 to the multiplies), merged back by
  /// masked vpshufd.
  static REPARAM_GUMBEL_NOISE_INLINE void mul_hi_lo(u32 a, u32 m, u32& hi, u32& lo) noexcept {
    const __m512i even = _mm512_mul_epu32(a, m);
    const __m512i odd = _mm512_mul_epu32(_mm512_shuffle_epi32(a, _MM_PERM_DDBB), m);
    hi = _mm512_mask_shuffle_epi32(odd, __mmask16{0x5555}, even, _MM_PERM_DDBB);
    lo = _mm512_mask_shuffle_epi32(even, __mmask16{0xAAAA}, odd, _MM_PERM_CCAA);
  }

  static REPARAM_GUMBEL_NOISE_INLINE f64 set1(double v) noexcept { return _mm512_set1_pd(v); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 from_bits(u32 a) noexcept {
    return _mm512_castsi512_pd(a);
  }
  static REPARAM_GUMBEL_NOISE_INLINE f64 add(f64 a, f64 b) noexcept { return _mm512_add_pd(a, b); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 sub(f64 a, f64 b) noexcept { return _mm512_sub_pd(a, b); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 mul(f64 a, f64 b) noexcept { return _mm512_mul_pd(a, b); }
  /// a * b + c, one rounding.
  static REPARAM_GUMBEL_NOISE_INLINE f64 fma(f64 a, f64 b, f64 c) noexcept {
    return _mm512_fmadd_pd(a, b, c);
  }
  static REPARAM_GUMBEL_NOISE_INLINE f64 negate(f64 a) noexcept {
    return _mm512_castsi512_pd(_mm512_xor_si512(
        _mm512_castpd_si512(a), _mm512_set1_epi64(std::numeric_limits<long long>::min())));
  }
  /// n / d without vdivpd (16 cycles per 8 doubles): vrcp14pd (2^-14), one Newton step
  /// (2^-28), then q0 = n r and one residual correction q0 + r (n - q0 d), 2^-56 before the
  /// final rounding. d is in [1.7, 2.5] here.
  static REPARAM_GUMBEL_NOISE_INLINE f64 quotient(f64 n, f64 d) noexcept {
    const __m512d r0 = _mm512_rcp14_pd(d);
    const __m512d r1 = _mm512_fmadd_pd(r0, _mm512_fnmadd_pd(d, r0, _mm512_set1_pd(1.0)), r0);
    const __m512d q0 = _mm512_mul_pd(n, r1);
    return _mm512_fmadd_pd(_mm512_fnmadd_pd(q0, d, n), r1, q0);
  }
  /// x = 2^k m, m in [sqrt2/2, sqrt2), k integral (x positive normal).
  static REPARAM_GUMBEL_NOISE_INLINE void split(f64 x, f64& k, f64& m) noexcept {
// Without optimization GCC's vgetmantpd/vgetexppd intrinsics are macros that convert the
// all-ones mask (__mmask8)-1 to char.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-conversion"
#endif
    const __m512d mant = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    const __m512d exponent = _mm512_getexp_pd(x);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    const __mmask8 big = _mm512_cmp_pd_mask(mant, _mm512_set1_pd(sqrt2), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(mant, big, mant, _mm512_set1_pd(0.5));
    k = _mm512_mask_add_pd(exponent, big, exponent, _mm512_set1_pd(1.0));
  }

  template <class T>
  static REPARAM_GUMBEL_NOISE_INLINE void store(T* out, f64 g) noexcept {
    if constexpr (std::is_same_v<T, double>) {
      _mm512_storeu_pd(out, g);
    } else {
      _mm256_storeu_ps(out, _mm512_cvtpd_ps(g));
    }
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpacklo32(u32 a, u32 b) noexcept {
    return _mm512_unpacklo_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpackhi32(u32 a, u32 b) noexcept {
    return _mm512_unpackhi_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpacklo64(u32 a, u32 b) noexcept {
    return _mm512_unpacklo_epi64(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpackhi64(u32 a, u32 b) noexcept {
    return _mm512_unpackhi_epi64(a, b);
  }
};

#endif  // REPARAM_HAS_GUMBEL_NOISE_AVX512

#if REPARAM_HAS_GUMBEL_NOISE_AVX2

/// AVX2 pieces: 8 blocks (16 columns) per group.
struct avx2_isa {
  using u32 = __m256i;
  using f64 = __m256d;
  static constexpr index group_blocks = 8;

  static REPARAM_GUMBEL_NOISE_INLINE u32 set1(std::uint32_t v) noexcept {
    return _mm256_set1_epi32(static_cast<int>(v));
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 set1_64(std::uint64_t v) noexcept {
    return _mm256_set1_epi64x(static_cast<long long>(v));
  }
  /// Lane 4 k + e computes block 2 e + k of the group (see the file comment).
  static REPARAM_GUMBEL_NOISE_INLINE u32 block_offsets() noexcept {
    return _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 add(u32 a, u32 b) noexcept {
    return _mm256_add_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 xor3(u32 a, u32 b, u32 c) noexcept {
    return _mm256_xor_si256(_mm256_xor_si256(a, b), c);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 xor2(u32 a, u32 b) noexcept {
    return _mm256_xor_si256(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 srli64_12(u32 a) noexcept {
    return _mm256_srli_epi64(a, 12);
  }
  /// hi:lo = a * m per 32-bit lane (m broadcast): vpmuludq of the even and the odd lanes.
  static REPARAM_GUMBEL_NOISE_INLINE void mul_hi_lo(u32 a, u32 m, u32& hi, u32& lo) noexcept {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }

  static REPARAM_GUMBEL_NOISE_INLINE f64 set1(double v) noexcept { return _mm256_set1_pd(v); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 from_bits(u32 a) noexcept {
    return _mm256_castsi256_pd(a);
  }
  static REPARAM_GUMBEL_NOISE_INLINE f64 add(f64 a, f64 b) noexcept { return _mm256_add_pd(a, b); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 sub(f64 a, f64 b) noexcept { return _mm256_sub_pd(a, b); }
  static REPARAM_GUMBEL_NOISE_INLINE f64 mul(f64 a, f64 b) noexcept { return _mm256_mul_pd(a, b); }
#if defined(__FMA__)
  static REPARAM_GUMBEL_NOISE_INLINE f64 fma(f64 a, f64 b, f64 c) noexcept {
    return _mm256_fmadd_pd(a, b, c);
  }
#else
  static REPARAM_GUMBEL_NOISE_INLINE f64 fma(f64 a, f64 b, f64 c) noexcept {
    return _mm256_add_pd(_mm256_mul_pd(a, b), c);
  }
#endif
  static REPARAM_GUMBEL_NOISE_INLINE f64 negate(f64 a) noexcept {
    return _mm256_xor_pd(a, _mm256_set1_pd(-0.0));
  }
  static REPARAM_GUMBEL_NOISE_INLINE f64 quotient(f64 n, f64 d) noexcept {
    return _mm256_div_pd(n, d);
  }
  /// x = 2^k m, m in [sqrt2/2, sqrt2), k integral (x positive normal): the biased exponent e
  /// goes into the mantissa of 2^52, so (2^52 + e) - (2^52 + 1023) = e - 1023 exactly.
  static REPARAM_GUMBEL_NOISE_INLINE void split(f64 x, f64& k, f64& m) noexcept {
    const __m256i bits = _mm256_castpd_si256(x);
    const __m256d mant = _mm256_castsi256_pd(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll)),
                        _mm256_set1_epi64x(0x3FF0000000000000ll)));
    const __m256d biased = _mm256_castsi256_pd(
        _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000ll)));
    const __m256d exponent = _mm256_sub_pd(biased, _mm256_set1_pd(4503599627371519.0));
    const __m256d big = _mm256_cmp_pd(mant, _mm256_set1_pd(sqrt2), _CMP_GT_OQ);
    m = _mm256_blendv_pd(mant, _mm256_mul_pd(mant, _mm256_set1_pd(0.5)), big);
    k = _mm256_add_pd(exponent, _mm256_and_pd(big, _mm256_set1_pd(1.0)));
  }

  template <class T>
  static REPARAM_GUMBEL_NOISE_INLINE void store(T* out, f64 g) noexcept {
    if constexpr (std::is_same_v<T, double>) {
      _mm256_storeu_pd(out, g);
    } else {
      _mm_storeu_ps(out, _mm256_cvtpd_ps(g));
    }
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpacklo32(u32 a, u32 b) noexcept {
    return _mm256_unpacklo_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpackhi32(u32 a, u32 b) noexcept {
    return _mm256_unpackhi_epi32(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpacklo64(u32 a, u32 b) noexcept {
    return _mm256_unpacklo_epi64(a, b);
  }
  static REPARAM_GUMBEL_NOISE_INLINE u32 unpackhi64(u32 a, u32 b) noexcept {
    return _mm256_unpackhi_epi64(a, b);
  }
};

#endif  // REPARAM_HAS_GUMBEL_NOISE_AVX2

/// Four vectors of 32-bit words.
template <class Isa>
struct word_vectors {
  typename Isa::u32 v[4];
};

/// The 4x4 transpose of 32-bit elements within every 128-bit lane (vpunpck{l,h}dq, then
/// vpunpck{l,h}qdq, no cross-lane shuffle): element e of 128-bit lane k of out.v[j] is element j
/// of 128-bit lane k of the e-th argument.
template <class Isa>
REPARAM_GUMBEL_NOISE_INLINE word_vectors<Isa> transpose_in_lanes(typename Isa::u32 a,
                                                                 typename Isa::u32 b,
                                                                 typename Isa::u32 c,
                                                                 typename Isa::u32 d) noexcept {
  using u32 = typename Isa::u32;
  const u32 t0 = Isa::unpacklo32(a, b);
  const u32 t1 = Isa::unpackhi32(a, b);
  const u32 t2 = Isa::unpacklo32(c, d);
  const u32 t3 = Isa::unpackhi32(c, d);
  return {{Isa::unpacklo64(t0, t2), Isa::unpackhi64(t0, t2), Isa::unpacklo64(t1, t3),
           Isa::unpackhi64(t1, t3)}};
}

/// The 4 Isa::group_blocks words of the group's blocks, in block order (the transpose leaves
/// them so with the lane order of the file comment).
template <class Isa>
REPARAM_GUMBEL_NOISE_INLINE void store_words(const block_state<Isa>& s,
                                             std::uint32_t* out) noexcept {
  const word_vectors<Isa> t = transpose_in_lanes<Isa>(s.x[0], s.x[1], s.x[2], s.x[3]);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
  for (index j = 0; j < 4; ++j) {
    std::memcpy(out + j * Isa::group_blocks, &t.v[j], sizeof(t.v[j]));  // an unaligned store
  }
}

/// Gumbel values of the group's 2 Isa::group_blocks columns. The transpose of (x1, x0, x3, x2)
/// pairs each column's words into a 64-bit lane (high word << 32 | low word: column 2b from words
/// 0, 1 of block b, column 2b + 1 from words 2, 3), and with the lane order of the file comment
/// vector j holds columns [j n, (j + 1) n), n = Isa::group_blocks / 2, in order.
template <class Isa, class T>
REPARAM_GUMBEL_NOISE_INLINE void store_gumbel(const block_state<Isa>& s, T* out) noexcept {
  const word_vectors<Isa> t = transpose_in_lanes<Isa>(s.x[1], s.x[0], s.x[3], s.x[2]);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
  for (index j = 0; j < 4; ++j) {
    Isa::store(out + j * (Isa::group_blocks / 2), gumbel_of_pairs<Isa>(t.v[j]));
  }
}

/// The vector pieces of `Arch`'s path (void for the scalar path).
template <class Arch, gumbel_noise_path Path = gumbel_noise_path_of<Arch>()>
struct isa_of {
  using type = void;
};
#if REPARAM_HAS_GUMBEL_NOISE_AVX512
template <class Arch>
struct isa_of<Arch, gumbel_noise_path::avx512> {
  using type = avx512_isa;
};
#endif
#if REPARAM_HAS_GUMBEL_NOISE_AVX2
template <class Arch>
struct isa_of<Arch, gumbel_noise_path::avx2> {
  using type = avx2_isa;
};
#endif

}  // namespace detail::gumbel_noise

/// Philox words of blocks [first_block, first_block + blocks) of `row` of draw `key`:
/// words[4 i + j] = gumbel_noise_block(key, row, first_block + i)[j] (block indices wrap modulo
/// 2^32 like the reference's uint32 sum). Column c of the row has its high word at
/// words[2 (c - 2 first_block)] and its low word right after it. Bit-identical to the reference
/// on every path. `words` holds 4 * blocks words, any alignment. No allocation, noexcept.
template <class Arch>
void gumbel_noise_words(gumbel_noise_key key, std::uint64_t row, std::uint32_t first_block,
                        index blocks, std::uint32_t* words) noexcept {
  using isa = typename detail::gumbel_noise::isa_of<Arch>::type;
  if constexpr (std::is_void_v<isa>) {
    for (index i = 0; i < blocks; ++i) {
      const philox4x32_counter b =
          gumbel_noise_block(key, row, first_block + static_cast<std::uint32_t>(i));
      for (std::size_t j = 0; j < 4; ++j) {
        words[4 * i + static_cast<index>(j)] = b[j];
      }
    }
  } else {
    namespace d = detail::gumbel_noise;
    const d::round_keys keys = d::make_round_keys(key.seed);
    const d::row_start start = d::make_row_start(keys, key.step, row);
    constexpr index group = isa::group_blocks;
    index i = 0;
    for (; i + group <= blocks; i += group) {
      const auto base = first_block + static_cast<std::uint32_t>(i);
      d::store_words<isa>(d::philox<isa>(keys, start, base), words + 4 * i);
    }
    if (i < blocks) {
      std::uint32_t tail[static_cast<std::size_t>(4 * group)];
      const auto base = first_block + static_cast<std::uint32_t>(i);
      d::store_words<isa>(d::philox<isa>(keys, start, base), tail);
      std::memcpy(words + 4 * i, tail, static_cast<std::size_t>(4 * (blocks - i)) * sizeof(*tail));
    }
  }
}

/// out[r * row_stride + c] = T(g(key, first_row + r, c)) for r < rows, c < cols (cols <= 2^33),
/// with g computed in double by vectorized log (within a few ulp of gumbel_noise_value, see the
/// file comment; the scalar path is the reference itself). The value at (row, col) does not
/// depend on rows, cols or first_row beyond the row index. T is float or double; `out` needs no
/// alignment. No allocation (a stack buffer of one group for the last columns), noexcept.
template <class Arch, class T>
void gumbel_noise_fill(gumbel_noise_key key, std::uint64_t first_row, index rows, index cols,
                       T* out, index row_stride) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gumbel_noise_fill: T must be float or double");
  using isa = typename detail::gumbel_noise::isa_of<Arch>::type;
  if constexpr (std::is_void_v<isa>) {
    gumbel_noise_fill_reference(key, first_row, rows, cols, out, row_stride);
  } else {
    namespace d = detail::gumbel_noise;
    const d::round_keys keys = d::make_round_keys(key.seed);
    constexpr index group_cols = 2 * isa::group_blocks;
    const index full = cols / group_cols * group_cols;
    for (index r = 0; r < rows; ++r) {
      const d::row_start start =
          d::make_row_start(keys, key.step, first_row + static_cast<std::uint64_t>(r));
      T* dst = out + r * row_stride;
      index c = 0;
      for (; c < full; c += group_cols) {
        const auto base = static_cast<std::uint32_t>(c >> 1);
        d::store_gumbel<isa>(d::philox<isa>(keys, start, base), dst + c);
      }
      if (c < cols) {
        T tail[static_cast<std::size_t>(group_cols)];
        const auto base = static_cast<std::uint32_t>(c >> 1);
        d::store_gumbel<isa>(d::philox<isa>(keys, start, base), tail);
        std::memcpy(dst + c, tail, static_cast<std::size_t>(cols - c) * sizeof(T));
      }
    }
  }
}

}  // namespace reparam::kernels::simd

#endif  // REPARAM_KERNELS_SIMD_GUMBEL_NOISE_HPP
