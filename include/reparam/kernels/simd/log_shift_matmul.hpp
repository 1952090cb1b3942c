// SPDX-License-Identifier: Apache-2.0
// Vectorized shift-form product of log-quantized probabilities with int16 values (the model is
// kernels/reference/log_shift_matmul.hpp; every path here equals it bit for bit, integer sums
// being exact in any order). Used by scale::multiply_shift_form_rows.
//
// Bucket stage, per output row and chunk of up to 2048 keys:
//  1. compaction: the keys with a non-zero code are packed as (code << 16 | key) (AVX-512:
//     vpcompressd of 16 codes per step; AVX2: a branch-free scalar loop). Post-softmax codes are
//     mostly zero codes at 4 bits (75-95% in the benchmark), and those never touch V again;
//  2. grouping: a counting sort of the packed keys by level (two interleaved histograms, so
//     runs of one level do not serialize on one counter);
//  3. sums: per column tile (up to 128 columns) and level, the V rows of the level's keys are
//     summed in registers and added to the level's bucket row once. When the caller's rows
//     number 4 or more, one pass over V finds max|v|, and a level with at most 32767 / max|v|
//     keys (128 for 8-bit values) is summed in int16 (one vpaddw per 32 columns and key),
//     widened once; other levels are summed in int32:
//      - avx512vbmi_vnni: one vpdpwssd per 16 columns against the word pairs (1, 0) and (0, 1)
//        of an unmodified 32-column load (even and odd columns in two accumulators, interleaved
//        back with vpermt2d when the bucket is written);
//      - avx512bw: vpmovsxwd from memory + vpaddd per 16 columns;
//      - avx2: vpmovsxwd + vpaddd per 8 columns, a scalar loop for the last cols % 8 columns.
//     Two accumulator sets take alternate keys so that the int32 add chains overlap. The last
//     partial 32-column block of a tile uses masked loads and stores (AVX-512).
//  Narrow rows (cols <= 16, AVX-512) skip the grouping: each packed key's V row is added into
//  a 64-byte-aligned stack copy of its bucket row, in key order.
//
// Combine stage: the reference's double operations in the same order, 8 (AVX-512) or 4 (AVX2)
// columns per vector, the sums of up to 64 columns held in registers while the levels are
// added. s = fma(double(bucket), 2^-shift, s) is bit-identical to the reference's
// s + ldexp(bucket, -shift) because the product is exact; then fma(sqrt2, s_odd, s_even), times
// the scale, converted to float (vcvtpd2ps, round to nearest even, as the scalar static_cast
// under the default MXCSR). In log_shift_matmul_rows the combine reads only the levels that
// occur in the row: an all-zero bucket adds +0, which never changes a sum that starts at +0.
#ifndef REPARAM_KERNELS_SIMD_LOG_SHIFT_MATMUL_HPP
#define REPARAM_KERNELS_SIMD_LOG_SHIFT_MATMUL_HPP

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/log_shift_matmul.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define REPARAM_HAS_LOG_SHIFT_AVX512 1
#else
#define REPARAM_HAS_LOG_SHIFT_AVX512 0
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define REPARAM_HAS_LOG_SHIFT_AVX2 1
#else
#define REPARAM_HAS_LOG_SHIFT_AVX2 0
#endif

// The helpers of the inner loops must be inlined for their vectors to stay in registers.
#if defined(__GNUC__)
#define REPARAM_LOG_SHIFT_INLINE inline __attribute__((always_inline))
#else
#define REPARAM_LOG_SHIFT_INLINE inline
#endif

namespace reparam::kernels::simd {

/// Code paths of the shift-form product, worst to best.
enum class log_shift_path { generic, avx2, avx512bw, avx512vnni };

/// The path an instantiation for `Arch` runs (its compile flags must enable that ISA):
/// avx512vnni for reparam::avx512vbmi_vnni, avx512bw for xsimd::avx512bw and its descendants,
/// avx2 for xsimd::avx2 / fma3<avx2> and the other AVX-512 tags, generic (the scalar reference)
/// otherwise.
template <class Arch>
constexpr log_shift_path log_shift_path_of() noexcept {
  constexpr bool has_avx512 = REPARAM_HAS_LOG_SHIFT_AVX512 != 0;
  constexpr bool has_avx2 = REPARAM_HAS_LOG_SHIFT_AVX2 != 0;
  constexpr bool is_vnni = std::is_same_v<Arch, avx512vbmi_vnni> && avx512vbmi_vnni::supported();
  constexpr bool is_avx512bw = std::is_base_of_v<xsimd::avx512bw, Arch>;
  constexpr bool is_avx2 =
      std::is_base_of_v<xsimd::avx2, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>;
  if constexpr (has_avx512 && is_vnni) {
    return log_shift_path::avx512vnni;
  } else if constexpr (has_avx512 && is_avx512bw) {
    return log_shift_path::avx512bw;
  } else if constexpr (has_avx2 && is_avx2) {
    return log_shift_path::avx2;
  } else {
    return log_shift_path::generic;
  }
}

namespace detail::log_shift {

/// Keys handled per chunk (their lists live on the stack: about 14 KB).
inline constexpr index chunk_keys = 2048;

/// 2^-shift as a double, built from its bit pattern (exact for 0 <= shift <= 1022): the value
/// std::ldexp(1.0, -shift), without a libm call per level.
inline double power_of_shift(int shift) noexcept {
  const std::uint64_t pattern = static_cast<std::uint64_t>(1023 - shift) << 52;
  double out;
  std::memcpy(&out, &pattern, sizeof out);
  return out;
}

/// The non-zero keys of one chunk, grouped by level.
struct level_lists {
  /// (code << 16) | key offset of every key with code < levels, in key order (16 entries of
  /// slack for full-vector stores).
  std::uint32_t packed[chunk_keys + 16];
  /// Key offsets grouped by level: level q's are keys[begin[q] .. begin[q + 1]).
  std::uint16_t keys[chunk_keys];
  std::int32_t begin[257];
  /// The levels with at least one key, ascending.
  std::uint8_t present[256];
  int present_count;
  /// Scatter positions of the even and odd entries of each level.
  std::int32_t next_even[256];
  std::int32_t next_odd[256];
};

/// Compacts the non-zero codes of `count` keys into packed (branch-free scalar model of the
/// vector versions); returns how many there are.
inline index compact_scalar(const std::uint8_t* REPARAM_RESTRICT codes, index count, int levels,
                            std::uint32_t* REPARAM_RESTRICT packed) noexcept {
  const auto top = static_cast<std::uint32_t>(levels);
  index n = 0;
  for (index j = 0; j < count; ++j) {
    const std::uint32_t code = codes[j];
    packed[n] = (code << 16) | static_cast<std::uint32_t>(j);
    n += code < top ? 1 : 0;
  }
  return n;
}

/// First half of the counting sort of the n packed keys by level: the histogram (two of them,
/// for even and odd entries, which halves the store-to-load chains of repeated levels), the
/// level starts `begin`, the present levels and the scatter positions.
inline void count_levels(index n, int levels, level_lists& REPARAM_RESTRICT out) noexcept {
  std::int32_t* even = out.next_even;
  std::int32_t* odd = out.next_odd;
  for (int q = 0; q < levels; ++q) {
    even[q] = 0;
    odd[q] = 0;
  }
  const std::uint32_t* packed = out.packed;
  index t = 0;
  for (; t + 1 < n; t += 2) {
    ++even[packed[t] >> 16];
    ++odd[packed[t + 1] >> 16];
  }
  if (t < n) {
    ++even[packed[t] >> 16];
  }
  std::int32_t at = 0;
  int present = 0;
  for (int q = 0; q < levels; ++q) {
    out.begin[q] = at;
    const std::int32_t e = even[q];
    const std::int32_t o = odd[q];
    even[q] = at;  // from here on: the next slot of level q's even entries
    odd[q] = at + e;
    at += e + o;
    out.present[present] = static_cast<std::uint8_t>(q);
    present += e + o > 0 ? 1 : 0;
  }
  out.begin[levels] = at;
  out.present_count = present;
}

/// Second half: the key offsets into `keys`, grouped by level (after count_levels).
inline void scatter_levels(index n, level_lists& REPARAM_RESTRICT out) noexcept {
  std::int32_t* even = out.next_even;
  std::int32_t* odd = out.next_odd;
  const std::uint32_t* packed = out.packed;
  index t = 0;
  for (; t + 1 < n; t += 2) {
    const std::uint32_t p0 = packed[t];
    const std::uint32_t p1 = packed[t + 1];
    out.keys[even[p0 >> 16]++] = static_cast<std::uint16_t>(p0 & 0xFFFFu);
    out.keys[odd[p1 >> 16]++] = static_cast<std::uint16_t>(p1 & 0xFFFFu);
  }
  if (t < n) {
    out.keys[even[packed[t] >> 16]++] = static_cast<std::uint16_t>(packed[t] & 0xFFFFu);
  }
}

/// Writes the levels q < levels with is_touched[q] into `touched`, ascending; returns how many.
inline int list_touched(const bool* is_touched, int levels, std::uint8_t* touched) noexcept {
  int count = 0;
  for (int q = 0; q < levels; ++q) {
    touched[count] = static_cast<std::uint8_t>(q);
    count += is_touched[q] ? 1 : 0;
  }
  return count;
}

/// Calls body(std::integral_constant<int, N>{}) with N = min(n, Max) (n >= 1): the vector count
/// of a tile as a template argument, so that its accumulators stay in registers.
template <int Max, class Body>
REPARAM_LOG_SHIFT_INLINE void with_count(index n, Body&& body) noexcept {
  if constexpr (Max > 1) {
    if (n < Max) {
      with_count<Max - 1>(n, body);
      return;
    }
  }
  body(std::integral_constant<int, Max>{});
}

/// Scalar bucket sums of columns [c_begin, c_end) of one level's keys (the AVX2 tail columns).
inline void add_level_scalar(const std::int16_t* REPARAM_RESTRICT chunk_v, index v_row_stride,
                             const std::uint16_t* REPARAM_RESTRICT keys, index n, index c_begin,
                             index c_end, std::int32_t* REPARAM_RESTRICT bucket,
                             bool is_first) noexcept {
  for (index c = c_begin; c < c_end; ++c) {
    std::int32_t sum = is_first ? 0 : bucket[c];
    for (index t = 0; t < n; ++t) {
      sum += chunk_v[index{keys[t]} * v_row_stride + c];
    }
    bucket[c] = sum;
  }
}

/// The combine of the reference for the columns [c_begin, c_end), over the listed levels only
/// (ascending; a level left out has an all-zero bucket, and adding +0 never changes s, which is
/// never -0), with the same double operations (the scalar tail of the vector combines).
inline void combine_scalar(const log_shift_operand& op,
                           const std::int32_t* REPARAM_RESTRICT buckets, index bucket_stride,
                           const std::uint8_t* listed, int listed_count, index c_begin, index c_end,
                           float* REPARAM_RESTRICT out) noexcept {
  for (index c = c_begin; c < c_end; ++c) {
    double s_even = 0.0;
    double s_odd = 0.0;
    for (int k = 0; k < listed_count; ++k) {
      const int q = listed[k];
      const auto b = static_cast<double>(buckets[q * bucket_stride + c]);
      const double power = power_of_shift(log_shift_of(q, op.is_sqrt2));
      if (log_shift_is_odd(q, op.is_sqrt2)) {
        s_odd = std::fma(b, power, s_odd);
      } else {
        s_even = std::fma(b, power, s_even);
      }
    }
    out[c] = static_cast<float>(op.scale * std::fma(log_shift_sqrt2, s_odd, s_even));
  }
}

#if REPARAM_HAS_LOG_SHIFT_AVX512

/// AVX-512 pieces, in a class template so that every helper depends on `Arch`.
template <class Arch, bool IsVnni>
struct avx512 {
  static constexpr bool has_narrow = true;
  /// Columns per block (one 512-bit load of int16) and blocks per tile.
  static constexpr index block_cols = 32;
  static constexpr int max_blocks = 4;

  /// The non-zero keys of a chunk: 16 codes per step, vpcompressd of (code << 16 | offset).
  static index compact(const std::uint8_t* REPARAM_RESTRICT codes, index count, int levels,
                       std::uint32_t* REPARAM_RESTRICT packed) noexcept {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i top = _mm_set1_epi8(static_cast<char>(levels));
    index n = 0;
    for (index j = 0; j < count; j += 16) {
      const index rest = count - j;
      const __mmask16 in =
          rest >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << rest) - 1u);
      const __m128i c = _mm_maskz_loadu_epi8(in, codes + j);
      const __mmask16 keep = _mm_mask_cmplt_epu8_mask(in, c, top);
      const __m512i value =
          _mm512_or_si512(_mm512_slli_epi32(_mm512_cvtepu8_epi32(c), 16),
                          _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j))));
      _mm512_storeu_si512(packed + n, _mm512_maskz_compress_epi32(keep, value));
      n += __builtin_popcount(static_cast<unsigned>(keep));
    }
    return n;
  }

  /// Two int32 accumulators per block: VNNI keeps (even columns, odd columns), the widening
  /// path (columns 0..15, 16..31).
  template <int Blocks>
  struct accumulators {
    __m512i lo[static_cast<std::size_t>(Blocks)];
    __m512i hi[static_cast<std::size_t>(Blocks)];
  };

  template <int Blocks>
  static REPARAM_LOG_SHIFT_INLINE void clear(accumulators<Blocks>& a) noexcept {
    for (int b = 0; b < Blocks; ++b) {
      a.lo[b] = _mm512_setzero_si512();
      a.hi[b] = _mm512_setzero_si512();
    }
  }

  /// a += one V row of the tile (`last_mask`: the columns present in the last block).
  template <int Blocks>
  static REPARAM_LOG_SHIFT_INLINE void add_row(accumulators<Blocks>& a, const std::int16_t* row,
                                               __mmask32 last_mask) noexcept {
    for (int b = 0; b < Blocks; ++b) {
      const std::int16_t* p = row + b * block_cols;
      if constexpr (IsVnni) {
        const __m512i x =
            b + 1 < Blocks ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(last_mask, p);
        a.lo[b] = _mm512_dpwssd_epi32(a.lo[b], x, _mm512_set1_epi32(0x00000001));
        a.hi[b] = _mm512_dpwssd_epi32(a.hi[b], x, _mm512_set1_epi32(0x00010000));
      } else {
        __m256i x0;
        __m256i x1;
        if (b + 1 < Blocks) {
          x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
        } else {
          x0 = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(last_mask), p);
          x1 = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(last_mask >> 16), p + 16);
        }
        a.lo[b] = _mm512_add_epi32(a.lo[b], _mm512_cvtepi16_epi32(x0));
        a.hi[b] = _mm512_add_epi32(a.hi[b], _mm512_cvtepi16_epi32(x1));
      }
    }
  }

  /// Writes (is_first) or adds the accumulators to the bucket row of the tile, in column order
  /// (IsEvenOdd: the accumulators hold the even and the odd columns, as vpdpwssd leaves them).
  template <bool IsEvenOdd, int Blocks>
  static REPARAM_LOG_SHIFT_INLINE void flush(const accumulators<Blocks>& a, std::int32_t* bucket,
                                             __mmask32 last_mask, bool is_first) noexcept {
    for (int b = 0; b < Blocks; ++b) {
      __m512i first;
      __m512i second;
      if constexpr (IsEvenOdd) {
        const __m512i even_odd_lo =
            _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        const __m512i even_odd_hi =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        first = _mm512_permutex2var_epi32(a.lo[b], even_odd_lo, a.hi[b]);
        second = _mm512_permutex2var_epi32(a.lo[b], even_odd_hi, a.hi[b]);
      } else {
        first = a.lo[b];
        second = a.hi[b];
      }
      std::int32_t* p = bucket + b * block_cols;
      const __mmask16 m0 = b + 1 < Blocks ? __mmask16{0xFFFF} : static_cast<__mmask16>(last_mask);
      const __mmask16 m1 =
          b + 1 < Blocks ? __mmask16{0xFFFF} : static_cast<__mmask16>(last_mask >> 16);
      if (!is_first) {
        first = _mm512_add_epi32(first, _mm512_maskz_loadu_epi32(m0, p));
        second = _mm512_add_epi32(second, _mm512_maskz_loadu_epi32(m1, p + 16));
      }
      _mm512_mask_storeu_epi32(p, m0, first);
      _mm512_mask_storeu_epi32(p + 16, m1, second);
    }
  }

  /// Bucket rows of columns [col0, col0 + width) for every present level of one chunk. A level
  /// with at most max_keys16 keys is summed in int16 (one vpaddw per 32 columns and key; exact
  /// because max_keys16 * max|v| <= 32767) and widened once; the others in int32.
  template <int Blocks>
  static void tile(const std::int16_t* REPARAM_RESTRICT chunk_v, index v_row_stride,
                   const level_lists& lists, index col0, index width, index cols, index max_keys16,
                   std::int32_t* REPARAM_RESTRICT buckets, const bool* is_touched) noexcept {
    const index rest = width - (Blocks - 1) * block_cols;  // 1 .. 32
    const __mmask32 last_mask =
        rest >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((std::uint32_t{1} << rest) - 1u);
    const std::int16_t* base = chunk_v + col0;
    for (int k = 0; k < lists.present_count; ++k) {
      const int q = lists.present[k];
      const std::uint16_t* keys = lists.keys + lists.begin[q];
      const index n = lists.begin[q + 1] - lists.begin[q];
      std::int32_t* bucket = buckets + q * cols + col0;
      if (n <= max_keys16) {
        __m512i s16[static_cast<std::size_t>(Blocks)];
        for (int b = 0; b < Blocks; ++b) {
          s16[b] = _mm512_setzero_si512();
        }
        for (index t = 0; t < n; ++t) {
          const std::int16_t* row = base + index{keys[t]} * v_row_stride;
          for (int b = 0; b < Blocks; ++b) {
            const std::int16_t* p = row + b * block_cols;
            const __m512i x =
                b + 1 < Blocks ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(last_mask, p);
            s16[b] = _mm512_add_epi16(s16[b], x);
          }
        }
        accumulators<Blocks> wide;
        for (int b = 0; b < Blocks; ++b) {
          wide.lo[b] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s16[b]));
          wide.hi[b] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s16[b], 1));
        }
        flush<false>(wide, bucket, last_mask, !is_touched[q]);
        continue;
      }
      accumulators<Blocks> a;
      accumulators<Blocks> b;
      clear(a);
      clear(b);
      index t = 0;
      for (; t + 1 < n; t += 2) {
        add_row(a, base + index{keys[t]} * v_row_stride, last_mask);
        add_row(b, base + index{keys[t + 1]} * v_row_stride, last_mask);
      }
      if (t < n) {
        add_row(a, base + index{keys[t]} * v_row_stride, last_mask);
      }
      for (int i = 0; i < Blocks; ++i) {
        a.lo[i] = _mm512_add_epi32(a.lo[i], b.lo[i]);
        a.hi[i] = _mm512_add_epi32(a.hi[i], b.hi[i]);
      }
      flush<IsVnni>(a, bucket, last_mask, !is_touched[q]);
    }
  }

  static void chunk(const std::int16_t* chunk_v, index v_row_stride, const level_lists& lists,
                    index cols, index max_keys16, std::int32_t* buckets,
                    const bool* is_touched) noexcept {
    constexpr index tile_cols = max_blocks * block_cols;
    for (index col0 = 0; col0 < cols; col0 += tile_cols) {
      const index width = cols - col0 < tile_cols ? cols - col0 : tile_cols;
      with_count<max_blocks>((width + block_cols - 1) / block_cols, [&](auto blocks) {
        tile<decltype(blocks)::value>(chunk_v, v_row_stride, lists, col0, width, cols, max_keys16,
                                      buckets, is_touched);
      });
    }
  }

  /// The largest |v| of V (32768 for -32768), 32 values per step.
  static index max_abs(const log_shift_operand& op) noexcept {
    __m512i top = _mm512_setzero_si512();
    const index full = op.cols / 32 * 32;
    const auto tail = static_cast<__mmask32>((std::uint32_t{1} << (op.cols - full)) - 1u);
    for (index j = 0; j < op.inner; ++j) {
      const std::int16_t* row = op.v + j * op.v_row_stride;
      for (index c = 0; c < full; c += 32) {
        top = _mm512_max_epu16(top, _mm512_abs_epi16(_mm512_loadu_si512(row + c)));
      }
      if (full < op.cols) {
        top = _mm512_max_epu16(top, _mm512_abs_epi16(_mm512_maskz_loadu_epi16(tail, row + full)));
      }
    }
    alignas(64) std::uint16_t lanes[32];
    _mm512_store_si512(lanes, top);
    index out = 0;
    for (const std::uint16_t lane : lanes) {
      out = lane > out ? index{lane} : out;
    }
    return out;
  }

  /// Columns of one combine tile: 8 vectors of 8 doubles per sum, 16 registers for both.
  static constexpr index combine_cols = 64;

  /// The combine of columns [c0, c0 + 8 Groups) (the last group masked by last_mask): the sums
  /// stay in registers while the listed levels are added in ascending order.
  template <int Groups>
  static void combine_tile(const log_shift_operand& op,
                           const std::int32_t* REPARAM_RESTRICT buckets, index bucket_stride,
                           const std::uint8_t* listed, int listed_count, index c0,
                           __mmask8 last_mask, float* REPARAM_RESTRICT out) noexcept {
    __m512d s_even[static_cast<std::size_t>(Groups)];
    __m512d s_odd[static_cast<std::size_t>(Groups)];
    for (int g = 0; g < Groups; ++g) {
      s_even[g] = _mm512_setzero_pd();
      s_odd[g] = _mm512_setzero_pd();
    }
    const auto load = [&](const std::int32_t* row, int g) {
      const __mmask8 m = g + 1 < Groups ? __mmask8{0xFF} : last_mask;
      return _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(m, row + index{8} * g));
    };
    for (int k = 0; k < listed_count; ++k) {
      const int q = listed[k];
      const std::int32_t* row = buckets + q * bucket_stride + c0;
      const __m512d power = _mm512_set1_pd(power_of_shift(log_shift_of(q, op.is_sqrt2)));
      if (log_shift_is_odd(q, op.is_sqrt2)) {
        for (int g = 0; g < Groups; ++g) {
          s_odd[g] = _mm512_fmadd_pd(load(row, g), power, s_odd[g]);
        }
      } else {
        for (int g = 0; g < Groups; ++g) {
          s_even[g] = _mm512_fmadd_pd(load(row, g), power, s_even[g]);
        }
      }
    }
    const __m512d sqrt2 = _mm512_set1_pd(log_shift_sqrt2);
    const __m512d scale = _mm512_set1_pd(op.scale);
    for (int g = 0; g < Groups; ++g) {
      const __mmask8 m = g + 1 < Groups ? __mmask8{0xFF} : last_mask;
      const __m512d r = _mm512_mul_pd(scale, _mm512_fmadd_pd(sqrt2, s_odd[g], s_even[g]));
      _mm256_mask_storeu_ps(out + c0 + index{8} * g, m, _mm512_cvtpd_ps(r));
    }
  }

  /// The combine over the listed levels (ascending) of buckets whose rows are bucket_stride
  /// int32 apart.
  static void combine(const log_shift_operand& op, const std::int32_t* REPARAM_RESTRICT buckets,
                      index bucket_stride, const std::uint8_t* listed, int listed_count,
                      float* REPARAM_RESTRICT out) noexcept {
    const index cols = op.cols;
    for (index c0 = 0; c0 < cols; c0 += combine_cols) {
      const index width = cols - c0 < combine_cols ? cols - c0 : combine_cols;
      const index rest = width - (width - 1) / 8 * 8;  // 1 .. 8
      const __mmask8 m = rest >= 8 ? __mmask8{0xFF} : static_cast<__mmask8>((1u << rest) - 1u);
      with_count<combine_cols / 8>((width + 7) / 8, [&](auto groups) {
        combine_tile<decltype(groups)::value>(op, buckets, bucket_stride, listed, listed_count, c0,
                                              m, out);
      });
    }
  }

  /// Narrow rows (cols <= 16): the non-zero keys are added straight into a stack copy of the
  /// buckets with one row of 16 int32 (one aligned vector) per level, in key order, without
  /// grouping; returns the levels that occur (ascending) in `touched`.
  static constexpr index narrow_cols = 16;
  struct narrow_buckets {
    alignas(64) std::int32_t value[256 * narrow_cols];  // row q at value + q * narrow_cols
  };
  static int narrow_stage(const log_shift_operand& op, index row, narrow_buckets& acc,
                          std::uint32_t* REPARAM_RESTRICT packed, std::uint8_t* touched) noexcept {
    const auto m = static_cast<__mmask16>((1u << op.cols) - 1u);  // cols in [0, 16]
    for (int q = 0; q < op.levels; ++q) {
      _mm512_store_si512(acc.value + q * narrow_cols, _mm512_setzero_si512());
    }
    bool is_touched[256] = {};
    const std::uint8_t* codes = op.codes + row * op.code_row_stride;
    for (index k0 = 0; k0 < op.inner; k0 += chunk_keys) {
      const index count = op.inner - k0 < chunk_keys ? op.inner - k0 : chunk_keys;
      const index n = compact(codes + k0, count, op.levels, packed);
      const std::int16_t* chunk_v = op.v + k0 * op.v_row_stride;
      for (index t = 0; t < n; ++t) {
        const std::uint32_t p = packed[t];
        const std::uint32_t q = p >> 16;
        const __m512i x = _mm512_cvtepi16_epi32(
            _mm256_maskz_loadu_epi16(m, chunk_v + index{p & 0xFFFFu} * op.v_row_stride));
        std::int32_t* bucket = acc.value + index{q} * narrow_cols;
        _mm512_store_si512(bucket, _mm512_add_epi32(_mm512_load_si512(bucket), x));
        is_touched[q] = true;
      }
    }
    return list_touched(is_touched, op.levels, touched);
  }
};

#endif  // REPARAM_HAS_LOG_SHIFT_AVX512

#if REPARAM_HAS_LOG_SHIFT_AVX2

/// AVX2 pieces: 8 columns per vector, up to 32 columns per tile, scalar tail columns.
template <class Arch>
struct avx2 {
  static constexpr bool has_narrow = false;
  static constexpr index vector_cols = 8;
  static constexpr int max_vectors = 4;

  static index compact(const std::uint8_t* REPARAM_RESTRICT codes, index count, int levels,
                       std::uint32_t* REPARAM_RESTRICT packed) noexcept {
    return compact_scalar(codes, count, levels, packed);
  }

  /// The largest |v| of V (32768 for -32768), 16 values per step, scalar tail.
  static index max_abs(const log_shift_operand& op) noexcept {
    __m256i top = _mm256_setzero_si256();
    const index full = op.cols / 16 * 16;
    index out = 0;
    for (index j = 0; j < op.inner; ++j) {
      const std::int16_t* row = op.v + j * op.v_row_stride;
      for (index c = 0; c < full; c += 16) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
        top = _mm256_max_epu16(top, _mm256_abs_epi16(x));
      }
      for (index c = full; c < op.cols; ++c) {
        const index a = row[c] < 0 ? -index{row[c]} : index{row[c]};
        out = a > out ? a : out;
      }
    }
    alignas(32) std::uint16_t lanes[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), top);
    for (const std::uint16_t lane : lanes) {
      out = lane > out ? index{lane} : out;
    }
    return out;
  }

  template <int Vectors>
  static REPARAM_LOG_SHIFT_INLINE void add_row(__m256i (&a)[static_cast<std::size_t>(Vectors)],
                                               const std::int16_t* row) noexcept {
    for (int k = 0; k < Vectors; ++k) {
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * vector_cols));
      a[k] = _mm256_add_epi32(a[k], _mm256_cvtepi16_epi32(x));
    }
  }

  /// Writes (is_first) or adds the int32 sums s to the bucket row of the tile.
  template <int Vectors>
  static REPARAM_LOG_SHIFT_INLINE void flush(const __m256i (&s)[static_cast<std::size_t>(Vectors)],
                                             std::int32_t* bucket, bool is_first) noexcept {
    for (int i = 0; i < Vectors; ++i) {
      __m256i sum = s[i];
      auto* p = reinterpret_cast<__m256i*>(bucket + i * vector_cols);
      if (!is_first) {
        sum = _mm256_add_epi32(sum, _mm256_loadu_si256(p));
      }
      _mm256_storeu_si256(p, sum);
    }
  }

  /// Bucket rows of columns [col0, col0 + 8 Vectors) for every present level of one chunk; a
  /// level with at most max_keys16 keys is summed in int16 (paddw), as in the AVX-512 paths.
  template <int Vectors>
  static void tile(const std::int16_t* REPARAM_RESTRICT chunk_v, index v_row_stride,
                   const level_lists& lists, index col0, index cols, index max_keys16,
                   std::int32_t* REPARAM_RESTRICT buckets, const bool* is_touched) noexcept {
    const std::int16_t* base = chunk_v + col0;
    for (int k = 0; k < lists.present_count; ++k) {
      const int q = lists.present[k];
      const std::uint16_t* keys = lists.keys + lists.begin[q];
      const index n = lists.begin[q + 1] - lists.begin[q];
      std::int32_t* bucket = buckets + q * cols + col0;
      if (n <= max_keys16) {
        __m128i s16[static_cast<std::size_t>(Vectors)];
        for (int i = 0; i < Vectors; ++i) {
          s16[i] = _mm_setzero_si128();
        }
        for (index t = 0; t < n; ++t) {
          const std::int16_t* row = base + index{keys[t]} * v_row_stride;
          for (int i = 0; i < Vectors; ++i) {
            const __m128i x =
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i * vector_cols));
            s16[i] = _mm_add_epi16(s16[i], x);
          }
        }
        __m256i wide[static_cast<std::size_t>(Vectors)];
        for (int i = 0; i < Vectors; ++i) {
          wide[i] = _mm256_cvtepi16_epi32(s16[i]);
        }
        flush<Vectors>(wide, bucket, !is_touched[q]);
        continue;
      }
      __m256i a[static_cast<std::size_t>(Vectors)];
      __m256i b[static_cast<std::size_t>(Vectors)];
      for (int i = 0; i < Vectors; ++i) {
        a[i] = _mm256_setzero_si256();
        b[i] = _mm256_setzero_si256();
      }
      index t = 0;
      for (; t + 1 < n; t += 2) {
        add_row<Vectors>(a, base + index{keys[t]} * v_row_stride);
        add_row<Vectors>(b, base + index{keys[t + 1]} * v_row_stride);
      }
      if (t < n) {
        add_row<Vectors>(a, base + index{keys[t]} * v_row_stride);
      }
      for (int i = 0; i < Vectors; ++i) {
        a[i] = _mm256_add_epi32(a[i], b[i]);
      }
      flush<Vectors>(a, bucket, !is_touched[q]);
    }
  }

  static void chunk(const std::int16_t* chunk_v, index v_row_stride, const level_lists& lists,
                    index cols, index max_keys16, std::int32_t* buckets,
                    const bool* is_touched) noexcept {
    constexpr index tile_cols = max_vectors * vector_cols;
    const index vector_end = cols / vector_cols * vector_cols;
    for (index col0 = 0; col0 < vector_end; col0 += tile_cols) {
      const index width = vector_end - col0 < tile_cols ? vector_end - col0 : tile_cols;
      with_count<max_vectors>(width / vector_cols, [&](auto vectors) {
        tile<decltype(vectors)::value>(chunk_v, v_row_stride, lists, col0, cols, max_keys16,
                                       buckets, is_touched);
      });
    }
    if (vector_end < cols) {
      for (int k = 0; k < lists.present_count; ++k) {
        const int q = lists.present[k];
        add_level_scalar(chunk_v, v_row_stride, lists.keys + lists.begin[q],
                         lists.begin[q + 1] - lists.begin[q], vector_end, cols, buckets + q * cols,
                         !is_touched[q]);
      }
    }
  }

  /// The combine over the listed levels, 4 columns per vector, scalar tail.
  static void combine(const log_shift_operand& op, const std::int32_t* REPARAM_RESTRICT buckets,
                      index bucket_stride, const std::uint8_t* listed, int listed_count,
                      float* REPARAM_RESTRICT out) noexcept {
    const index cols = op.cols;
    const index vector_end = cols / 4 * 4;
    const __m256d sqrt2 = _mm256_set1_pd(log_shift_sqrt2);
    const __m256d scale = _mm256_set1_pd(op.scale);
    for (index c = 0; c < vector_end; c += 4) {
      __m256d s_even = _mm256_setzero_pd();
      __m256d s_odd = _mm256_setzero_pd();
      for (int k = 0; k < listed_count; ++k) {
        const int q = listed[k];
        const __m256d b = _mm256_cvtepi32_pd(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(buckets + q * bucket_stride + c)));
        const __m256d power = _mm256_set1_pd(power_of_shift(log_shift_of(q, op.is_sqrt2)));
        if (log_shift_is_odd(q, op.is_sqrt2)) {
          s_odd = _mm256_fmadd_pd(b, power, s_odd);
        } else {
          s_even = _mm256_fmadd_pd(b, power, s_even);
        }
      }
      const __m256d r = _mm256_mul_pd(scale, _mm256_fmadd_pd(sqrt2, s_odd, s_even));
      _mm_storeu_ps(out + c, _mm256_cvtpd_ps(r));
    }
    combine_scalar(op, buckets, bucket_stride, listed, listed_count, vector_end, cols, out);
  }
};

#endif  // REPARAM_HAS_LOG_SHIFT_AVX2

/// The vector pieces of `Arch`'s path (void for the generic path).
template <class Arch, log_shift_path Path = log_shift_path_of<Arch>()>
struct path_impl {
  using type = void;
};
#if REPARAM_HAS_LOG_SHIFT_AVX512
template <class Arch>
struct path_impl<Arch, log_shift_path::avx512vnni> {
  using type = avx512<Arch, true>;
};
template <class Arch>
struct path_impl<Arch, log_shift_path::avx512bw> {
  using type = avx512<Arch, false>;
};
#endif
#if REPARAM_HAS_LOG_SHIFT_AVX2
template <class Arch>
struct path_impl<Arch, log_shift_path::avx2> {
  using type = avx2<Arch>;
};
#endif

/// Bucket stage of one row on a vector path: every level in `touched` (ascending, returned
/// count) has its bucket row written; the other rows of `buckets` are left as they were.
template <class Impl>
int bucket_stage(const log_shift_operand& op, index row, index max_keys16,
                 std::int32_t* REPARAM_RESTRICT buckets, std::uint8_t* touched) noexcept {
  static constexpr bool untouched[256] = {};
  level_lists lists;
  const std::uint8_t* codes = op.codes + row * op.code_row_stride;
  if (op.inner <= chunk_keys) {
    // One chunk: its present levels are the touched ones.
    const index n = Impl::compact(codes, op.inner, op.levels, lists.packed);
    if (n == 0) {
      return 0;
    }
    count_levels(n, op.levels, lists);
    scatter_levels(n, lists);
    Impl::chunk(op.v, op.v_row_stride, lists, op.cols, max_keys16, buckets, untouched);
    std::memcpy(touched, lists.present, static_cast<std::size_t>(lists.present_count));
    return lists.present_count;
  }
  bool is_touched[256] = {};
  for (index k0 = 0; k0 < op.inner; k0 += chunk_keys) {
    const index count = op.inner - k0 < chunk_keys ? op.inner - k0 : chunk_keys;
    const index n = Impl::compact(codes + k0, count, op.levels, lists.packed);
    if (n == 0) {
      continue;
    }
    count_levels(n, op.levels, lists);
    scatter_levels(n, lists);
    Impl::chunk(op.v + k0 * op.v_row_stride, op.v_row_stride, lists, op.cols, max_keys16, buckets,
                is_touched);
    for (int k = 0; k < lists.present_count; ++k) {
      is_touched[lists.present[k]] = true;
    }
  }
  return list_touched(is_touched, op.levels, touched);
}

}  // namespace detail::log_shift

/// Bucket stage of output row `row`, equal to kernels::reference::log_shift_buckets (same
/// arguments and guarantees; `buckets` holds levels * cols int32 and is fully overwritten).
/// No allocation (about 16 KB of stack), noexcept.
template <class Arch>
void log_shift_buckets(Arch, const log_shift_operand& op, index row,
                       std::int32_t* REPARAM_RESTRICT buckets) noexcept {
  using impl = typename detail::log_shift::path_impl<Arch>::type;
  if constexpr (std::is_void_v<impl>) {
    reference::log_shift_buckets(op, row, buckets);
  } else {
    std::uint8_t touched[256];
    const int count = detail::log_shift::bucket_stage<impl>(op, row, 0, buckets, touched);
    int k = 0;
    for (int q = 0; q < op.levels; ++q) {
      if (k < count && touched[k] == q) {
        ++k;
        continue;
      }
      std::int32_t* bucket = buckets + q * op.cols;
      for (index c = 0; c < op.cols; ++c) {
        bucket[c] = 0;
      }
    }
  }
}

/// Combine stage over every level, equal bit for bit to kernels::reference::log_shift_combine.
/// noexcept.
template <class Arch>
void log_shift_combine(Arch, const log_shift_operand& op,
                       const std::int32_t* REPARAM_RESTRICT buckets,
                       float* REPARAM_RESTRICT out) noexcept {
  using impl = typename detail::log_shift::path_impl<Arch>::type;
  if constexpr (std::is_void_v<impl>) {
    reference::log_shift_combine(op, buckets, out);
  } else {
    std::uint8_t all[256];
    for (int q = 0; q < op.levels; ++q) {
      all[q] = static_cast<std::uint8_t>(q);
    }
    impl::combine(op, buckets, op.cols, all, op.levels, out);
  }
}

/// out[i, c] for rows i in [row_begin, row_end), equal bit for bit to
/// kernels::reference::log_shift_matmul_rows (same arguments, preconditions and guarantees).
/// Per row, the bucket stage writes only the levels that occur and the combine reads only those
/// (skipping an all-zero bucket leaves the double sums unchanged); with cols <= 16 the AVX-512
/// paths keep the buckets on the stack and leave the workspace unused. Safe to call
/// concurrently on disjoint row ranges with distinct workspaces. No allocation (up to about
/// 25 KB of stack), noexcept.
template <class Arch>
void log_shift_matmul_rows(Arch, const log_shift_operand& op, float* REPARAM_RESTRICT out,
                           index out_row_stride, index row_begin, index row_end,
                           std::int32_t* REPARAM_RESTRICT workspace) noexcept {
  using impl = typename detail::log_shift::path_impl<Arch>::type;
  if constexpr (std::is_void_v<impl>) {
    reference::log_shift_matmul_rows(op, out, out_row_stride, row_begin, row_end, workspace);
  } else {
    std::uint8_t touched[256];
    if constexpr (impl::has_narrow) {
      if (op.cols <= impl::narrow_cols) {
        typename impl::narrow_buckets acc;
        std::uint32_t packed[detail::log_shift::chunk_keys + 16];
        for (index i = row_begin; i < row_end; ++i) {
          const int count = impl::narrow_stage(op, i, acc, packed, touched);
          impl::combine(op, acc.value, impl::narrow_cols, touched, count, out + i * out_row_stride);
        }
        return;
      }
    }
    // With 4 rows or more, one pass over V for its largest |v| pays for int16 sums of the levels
    // that have at most 32767 / max|v| keys (128 keys for 8-bit values).
    index max_keys16 = 0;
    if (row_end - row_begin >= 4) {
      const index top = impl::max_abs(op);
      max_keys16 = top == 0 ? detail::log_shift::chunk_keys : 32767 / top;
    }
    for (index i = row_begin; i < row_end; ++i) {
      const int count =
          detail::log_shift::bucket_stage<impl>(op, i, max_keys16, workspace, touched);
      impl::combine(op, workspace, op.cols, touched, count, out + i * out_row_stride);
    }
  }
}

}  // namespace reparam::kernels::simd

#endif  // REPARAM_KERNELS_SIMD_LOG_SHIFT_MATMUL_HPP
