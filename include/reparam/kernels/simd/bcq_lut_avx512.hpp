// SPDX-License-Identifier: Apache-2.0
// AVX-512 paths of the LUT product on packed binary-coded weights (kernels/bcq_lut_layout.hpp),
// selected by kernels/simd/bcq_lut.hpp. A 64-byte sign block holds 32 rows x 4 k-groups of one
// plane and quad, i.e. 128 table lookups:
//  - avx512bw, fast (int8 tables): one vpshufb and one vpermd regroup the block so that 128-bit
//    lane s holds k-group s of 16 rows (low nibbles) and of the other 16 rows (high nibbles), and
//    two vpshufb against the quad's 64-byte table (lane s = k-group s's entries) do the 128
//    lookups. The entries, biased to unsigned bytes, are summed in 16-bit words (the word sums
//    and the odd-byte sums give both rows of a word); the four lanes are reduced and widened to
//    int32 once per group or 64 quads (4 lanes x 64 quads x 255 < 2^16).
//  - avx512bw, lossless (float tables): per k-group s, two vpermps (indices: the block's dwords
//    shifted right by 8s and 8s + 4, vpermps reads the low 4 bits) look up 16 rows each, and
//    vaddps adds them k-group by k-group, the reference order, with one chain per (plane, half,
//    nibble) so that every plane of a quad is in flight.
//  - avx512vbmi_vnni, fast: the block's nibbles or'ed with the k-group number in bits 4-5 index
//    one vpermb over the quad's four tables (64 lookups per instruction), and one vpdpbusd sums
//    each row's four k-groups into int32 (16 rows per instruction). Lossless as avx512bw.
// Scales and offsets are applied per (row, group, plane) in float with vfmadd in the reference
// order. Two tile streams are read side by side with software prefetch ahead (one sequential
// stream leaves memory bandwidth unused); with several tokens, a record's table indices are
// computed once into a stack buffer and reused by every token while the record is in L1.
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP

#include <reparam/kernels/arch.hpp>

#if defined(__AVX512F__) && defined(__AVX512BW__)

#include <algorithm>
#include <cstdint>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>

#include <immintrin.h>

#define REPARAM_HAS_LUT_AVX512BW 1
#ifndef REPARAM_LUT512_STREAMS
#define REPARAM_LUT512_STREAMS 2
#endif

// The small helpers of the inner loops must be inlined for their vectors to stay in registers
// (GCC's -O2 heuristics leave some out of line, passing them through memory).
#if defined(__GNUC__)
#define REPARAM_LUT512_INLINE __attribute__((always_inline))
#else
#define REPARAM_LUT512_INLINE
#endif

namespace reparam::kernels::simd {

namespace detail {

/// The pieces of the AVX-512 LUT paths, in a class template so that every helper depends on
/// `Arch` (STYLE.md section 3). Accumulators are structs with one member per vector, never
/// arrays: GCC 12 keeps arrays indexed in loops in memory and copies registers around every
/// accumulate.
template <class Arch>
struct lut512 {
  /// Tokens whose 64-row float accumulators live on the stack at a time.
  static constexpr index token_block = 16;
  /// Tiles streamed side by side.
  static constexpr index streams = REPARAM_LUT512_STREAMS;
  /// Software prefetch distance in the packed stream.
  static constexpr index prefetch_bytes = 2048;
  /// Quads the fast avx512bw path sums in 16-bit words before widening to int32.
  static constexpr index word_quads = 64;
  /// Bytes of a record's table indices (two vectors per sign block) kept on the stack.
  static constexpr index decoded_bytes = 16384;

  /// 64 rows of int32 (r0: rows 0-15, r1: 16-31, r2: 32-47, r3: 48-63).
  struct rows_i {
    __m512i r0, r1, r2, r3;
  };
  /// 64 rows of float.
  struct rows_f {
    __m512 r0, r1, r2, r3;
  };
  /// The two index vectors of a sign block (low-nibble rows, high-nibble rows).
  struct indices2 {
    __m512i lo, hi;
  };

  REPARAM_LUT512_INLINE static rows_i zero_i() noexcept {
    return {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
            _mm512_setzero_si512()};
  }
  REPARAM_LUT512_INLINE static rows_f zero_f() noexcept {
    return {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  }
  REPARAM_LUT512_INLINE static rows_f load(const float* p) noexcept {
    return {_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16), _mm512_loadu_ps(p + 32),
            _mm512_loadu_ps(p + 48)};
  }
  REPARAM_LUT512_INLINE static void store(float* p, const rows_f& x) noexcept {
    _mm512_storeu_ps(p, x.r0);
    _mm512_storeu_ps(p + 16, x.r1);
    _mm512_storeu_ps(p + 32, x.r2);
    _mm512_storeu_ps(p + 48, x.r3);
  }
  /// fma(a[i], x[i], acc[i]) for the 64 rows, a read from memory.
  REPARAM_LUT512_INLINE static rows_f fma(const float* a, const rows_f& x,
                                          const rows_f& acc) noexcept {
    return {_mm512_fmadd_ps(_mm512_loadu_ps(a), x.r0, acc.r0),
            _mm512_fmadd_ps(_mm512_loadu_ps(a + 16), x.r1, acc.r1),
            _mm512_fmadd_ps(_mm512_loadu_ps(a + 32), x.r2, acc.r2),
            _mm512_fmadd_ps(_mm512_loadu_ps(a + 48), x.r3, acc.r3)};
  }
  REPARAM_LUT512_INLINE static rows_f to_float(const rows_i& x) noexcept {
    return {_mm512_cvtepi32_ps(x.r0), _mm512_cvtepi32_ps(x.r1), _mm512_cvtepi32_ps(x.r2),
            _mm512_cvtepi32_ps(x.r3)};
  }

  /// Prefetches the `lines` cache lines at `at` + prefetch_bytes.
  REPARAM_LUT512_INLINE static void prefetch(const void* at, index lines) noexcept {
    const char* p = static_cast<const char*>(at) + prefetch_bytes;
    for (index l = 0; l < lines; ++l) {
      _mm_prefetch(p + 64 * l, _MM_HINT_T0);
    }
  }

  /// Floats of a record's scales and offsets at most (8 planes + offsets, 64 rows).
  static constexpr index scale_buffer_floats = 9 * lut_tile_rows;

  /// The record's float scales (plane p at p * 64, offsets at bits * 64): in place, or converted
  /// from binary16 into `buffer` (exact, vcvtph2ps).
  REPARAM_LUT512_INLINE static const float* record_scales(const bcq_lut_operand& w,
                                                          const std::uint8_t* record,
                                                          float* buffer) noexcept {
    if (!w.has_half_scales) {
      return w.scales(record, 0);
    }
    const std::uint16_t* half = w.half_scales(record);
    for (index i = 0; i < w.scale_count(); i += 16) {
      _mm512_store_ps(
          buffer + i,
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(half + i))));
    }
    return buffer;
  }

  /// Prefetches the scales and offsets of the record `prefetch_bytes` ahead.
  static void prefetch_scales(const bcq_lut_operand& w, const std::uint8_t* record) noexcept {
    prefetch(w.scale_bytes(record),
             index{w.has_half_scales ? 2 : 4} * (w.bits + (w.has_offsets ? 1 : 0)));
  }

  /// Stores the rows of tile `tile` that fall in [row_begin, row_end) from `acc` to y.
  static void store_tile(const float* acc, float* y, index tile, index row_begin,
                         index row_end) noexcept {
    for (index j = 0; j < 4; ++j) {
      const index first = tile * lut_tile_rows + 16 * j;
      const index begin = std::max<index>(row_begin - first, 0);
      const index end = std::min<index>(row_end - first, 16);
      if (begin >= end) {
        continue;
      }
      const auto mask = static_cast<__mmask16>((0xFFFFu >> (16 - (end - begin))) << begin);
      _mm512_mask_storeu_ps(y + first, mask, _mm512_load_ps(acc + 16 * j));
    }
  }

  /// Calls `record_fn(record, group, first_token, tokens, acc)` for every (tile, token block,
  /// group), acc being the block's tokens x 64 float accumulators of the tile (zeroed before
  /// group 0), and stores the tiles. Tiles are taken `streams` at a time, one from each part of
  /// the tile range, and their records of one group are processed back to back: several
  /// sequential streams keep more memory requests in flight than one.
  template <class RecordFn>
  static void run(const bcq_lut_operand& w, const bcq_lut_tables& tables, float* y,
                  index y_row_stride, index row_begin, index row_end,
                  RecordFn&& record_fn) noexcept {
    if (row_begin >= row_end || tables.batch <= 0) {
      return;
    }
    alignas(64) float acc[streams][token_block * lut_tile_rows];
    const index tile_begin = row_begin / lut_tile_rows;
    const index tile_count = (row_end + lut_tile_rows - 1) / lut_tile_rows - tile_begin;
    const index step = (tile_count + streams - 1) / streams;
    for (index i = 0; i < step; ++i) {
      index tiles[streams];
      index live = 0;
      for (index s = 0; s < streams; ++s) {
        if (i + s * step < tile_count) {
          tiles[live++] = tile_begin + i + s * step;
        }
      }
      for (index b0 = 0; b0 < tables.batch; b0 += token_block) {
        const index tokens = std::min(token_block, tables.batch - b0);
        for (index s = 0; s < live; ++s) {
          for (index k = 0; k < tokens * lut_tile_rows; k += 16) {
            _mm512_store_ps(acc[s] + k, _mm512_setzero_ps());
          }
        }
        for (index g = 0; g < w.groups; ++g) {
          for (index s = 0; s < live; ++s) {
            record_fn(w.record(tiles[s], g), g, b0, tokens, acc[s]);
          }
        }
        for (index b = 0; b < tokens; ++b) {
          float* yb = y + (b0 + b) * y_row_stride;
          for (index s = 0; s < live; ++s) {
            store_tile(acc[s] + b * lut_tile_rows, yb, tiles[s], row_begin, row_end);
          }
        }
      }
    }
  }

  /// acc = fma(offset, group_sum, acc) over the 64 rows (a matrix with offsets), stored to
  /// acc_rows.
  static void finish(const bcq_lut_operand& w, const float* sc, float group_sum, const rows_f& acc,
                     float* acc_rows) noexcept {
    if (w.has_offsets) {
      const __m512 sum = _mm512_set1_ps(group_sum);
      store(acc_rows, fma(sc + w.bits * lut_tile_rows, {sum, sum, sum, sum}, acc));
    } else {
      store(acc_rows, acc);
    }
  }

  /// The fast mode's group step acc = fma(sigma_g, s, acc), then the offsets.
  static void finish_fast(const bcq_lut_operand& w, const bcq_lut_tables& tables, const float* sc,
                          index g, index b, const rows_f& s, float* acc_rows) noexcept {
    const __m512 sigma = _mm512_set1_ps(tables.group_scale[b * tables.groups + g]);
    const rows_f acc = load(acc_rows);
    finish(w, sc, tables.group_sum[b * tables.groups + g],
           {_mm512_fmadd_ps(sigma, s.r0, acc.r0), _mm512_fmadd_ps(sigma, s.r1, acc.r1),
            _mm512_fmadd_ps(sigma, s.r2, acc.r2), _mm512_fmadd_ps(sigma, s.r3, acc.r3)},
           acc_rows);
  }

  /// Whether a record's blocks are decoded once for `tokens` tokens: more than one token and
  /// the indices fit decoded_bytes (groups of up to 128 columns at any width, 256 at 4 bits).
  static bool is_decoding(const bcq_lut_operand& w, index tokens) noexcept {
    return tokens > 1 && w.quads_per_group * w.bits * 4 * lut_block_bytes <= decoded_bytes;
  }

  /// Writes the two index vectors of every sign block of `record` (block k at 2k, 2k + 1) as
  /// returned by indices(v), prefetching ahead.
  template <class Indices>
  static void decode_record(const bcq_lut_operand& w, const std::uint8_t* record,
                            std::uint8_t* decoded, Indices&& indices) noexcept {
    const index blocks = w.quads_per_group * w.bits * 2;
    for (index k = 0; k < blocks; ++k) {
      prefetch(record + k * lut_block_bytes, 1);
      const indices2 x = indices(_mm512_loadu_si512(record + k * lut_block_bytes));
      _mm512_store_si512(decoded + 2 * k * lut_block_bytes, x.lo);
      _mm512_store_si512(decoded + (2 * k + 1) * lut_block_bytes, x.hi);
    }
  }

  /// The index vectors of block k: decoded (IsDecoded) or computed from the record.
  template <bool IsDecoded, class Indices>
  REPARAM_LUT512_INLINE static indices2 block_indices(const std::uint8_t* record,
                                                      const std::uint8_t* decoded, index k,
                                                      Indices&& indices) noexcept {
    if constexpr (IsDecoded) {
      return {_mm512_load_si512(decoded + 2 * k * lut_block_bytes),
              _mm512_load_si512(decoded + (2 * k + 1) * lut_block_bytes)};
    } else {
      return indices(_mm512_loadu_si512(record + k * lut_block_bytes));
    }
  }

  // ---- lossless: float tables, vpermps -------------------------------------------------------

  /// Adds the lookups of the plane's sign blocks k (rows 0-31) and k + 1 (rows 32-63) in the
  /// quad's tables t0..t3 to a, k-group by k-group.
  REPARAM_LUT512_INLINE static rows_f lossless_plane(const std::uint8_t* record, index k, __m512 t0,
                                                     __m512 t1, __m512 t2, __m512 t3,
                                                     rows_f a) noexcept {
    lossless_block(_mm512_loadu_si512(record + k * lut_block_bytes), t0, t1, t2, t3, a.r0, a.r1);
    lossless_block(_mm512_loadu_si512(record + (k + 1) * lut_block_bytes), t0, t1, t2, t3, a.r2,
                   a.r3);
    return a;
  }

  /// Adds one sign block's lookups in the quad's tables t0..t3 to lo (rows i) and hi (rows
  /// i + 16), k-group by k-group.
  REPARAM_LUT512_INLINE static void lossless_block(__m512i v, __m512 t0, __m512 t1, __m512 t2,
                                                   __m512 t3, __m512& lo, __m512& hi) noexcept {
    lo = _mm512_add_ps(lo, _mm512_permutexvar_ps(v, t0));
    hi = _mm512_add_ps(hi, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t0));
    lo = _mm512_add_ps(lo, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8), t1));
    hi = _mm512_add_ps(hi, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 12), t1));
    lo = _mm512_add_ps(lo, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 16), t2));
    hi = _mm512_add_ps(hi, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 20), t2));
    lo = _mm512_add_ps(lo, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 24), t3));
    hi = _mm512_add_ps(hi, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 28), t3));
  }

  /// Planes [p0, p0 + NP) of a record for one token: per-plane partial sums in k-group order,
  /// then acc = fma(alpha_p, partial_p, acc) plane by plane.
  template <int NP>
  static void lossless_planes(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                              const float* table, int p0, bool is_prefetching,
                              rows_f& acc) noexcept {
    const index quads = w.quads_per_group;
    const int bits = w.bits;
    rows_f a0 = zero_f();
    rows_f a1 = zero_f();
    rows_f a2 = zero_f();
    rows_f a3 = zero_f();
    for (index q = 0; q < quads; ++q) {
      const float* tq = table + q * lut_quad_entries;
      const __m512 t0 = _mm512_loadu_ps(tq);
      const __m512 t1 = _mm512_loadu_ps(tq + 16);
      const __m512 t2 = _mm512_loadu_ps(tq + 32);
      const __m512 t3 = _mm512_loadu_ps(tq + 48);
      const index first = (q * bits + p0) * 2;  // the block index of (q, p0, half 0)
      if (is_prefetching) {
        prefetch(record + first * lut_block_bytes, index{2} * NP);
      }
      a0 = lossless_plane(record, first, t0, t1, t2, t3, a0);
      if constexpr (NP > 1) {
        a1 = lossless_plane(record, first + 2, t0, t1, t2, t3, a1);
      }
      if constexpr (NP > 2) {
        a2 = lossless_plane(record, first + 4, t0, t1, t2, t3, a2);
      }
      if constexpr (NP > 3) {
        a3 = lossless_plane(record, first + 6, t0, t1, t2, t3, a3);
      }
    }
    acc = fma(sc + (p0)*lut_tile_rows, a0, acc);
    if constexpr (NP > 1) {
      acc = fma(sc + (p0 + 1) * lut_tile_rows, a1, acc);
    }
    if constexpr (NP > 2) {
      acc = fma(sc + (p0 + 2) * lut_tile_rows, a2, acc);
    }
    if constexpr (NP > 3) {
      acc = fma(sc + (p0 + 3) * lut_tile_rows, a3, acc);
    }
  }

  /// One record, lossless, for tokens [b0, b0 + tokens).
  static void lossless_record(const bcq_lut_operand& w, const bcq_lut_tables& tables,
                              const std::uint8_t* record, index g, index b0, index tokens,
                              float* acc_block) noexcept {
    alignas(64) float scale_buffer[scale_buffer_floats];
    const float* sc = record_scales(w, record, scale_buffer);
    prefetch_scales(w, record);
    for (index b = 0; b < tokens; ++b) {
      float* acc_rows = acc_block + b * lut_tile_rows;
      const float* table = tables.float_quad(b0 + b, g, 0, w.quads_per_group);
      rows_f acc = load(acc_rows);
      for (int p0 = 0; p0 < w.bits; p0 += 4) {
        switch (std::min(4, w.bits - p0)) {
          case 1:
            lossless_planes<1>(w, record, sc, table, p0, b == 0, acc);
            break;
          case 2:
            lossless_planes<2>(w, record, sc, table, p0, b == 0, acc);
            break;
          case 3:
            lossless_planes<3>(w, record, sc, table, p0, b == 0, acc);
            break;
          default:
            lossless_planes<4>(w, record, sc, table, p0, b == 0, acc);
            break;
        }
      }
      finish(w, sc, tables.group_sum[(b0 + b) * tables.groups + g], acc, acc_rows);
    }
  }

  // ---- fast avx512bw: vpshufb on regrouped blocks, 16-bit sums ---------------------------------

  /// A sign block's vpshufb indices: the block regrouped so that lane s holds k-group s (byte
  /// 16s + j is row j's byte), low nibbles in lo, high nibbles in hi.
  REPARAM_LUT512_INLINE static indices2 bw_indices(__m512i v) noexcept {
    // In each lane, byte 4j + s (row j of the lane, k-group s) goes to byte 4s + j...
    const __m512i in_lane = _mm512_set4_epi32(0x0F0B0703, 0x0E0A0602, 0x0D090501, 0x0C080400);
    // ...then dword s of lane L goes to dword L of lane s.
    const __m512i across = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const __m512i r = _mm512_permutexvar_epi32(across, _mm512_shuffle_epi8(v, in_lane));
    return {_mm512_and_si512(r, nibble), _mm512_and_si512(_mm512_srli_epi16(r, 4), nibble)};
  }
  /// bw_indices as a function object (for decode_record and block_indices).
  struct bw_decode {
    REPARAM_LUT512_INLINE indices2 operator()(__m512i v) const noexcept { return bw_indices(v); }
  };

  /// 16-bit sums of one (plane, half): the word sums (a) and the odd-byte sums (b) of the
  /// biased (unsigned) lookups of the low-nibble rows (l) and the high-nibble rows (h).
  struct word_sums {
    __m512i al, bl, ah, bh;
  };

  /// The starting words that make word_reduce return signed sums after n quads: each quad
  /// adds a bias of 128 per lookup, four lookups (lanes) per row.
  REPARAM_LUT512_INLINE static word_sums word_start(index n) noexcept {
    const auto n32 = static_cast<std::int32_t>(n);
    const auto b = static_cast<std::uint16_t>(-128 * n32);
    const auto a = static_cast<std::uint16_t>(-128 * n32 - 32768 * (n32 & 1));
    const __m512i vb = _mm512_set1_epi16(static_cast<short>(b));
    const __m512i va = _mm512_set1_epi16(static_cast<short>(a));
    return {va, vb, va, vb};
  }

  /// Reduces one (plane, half)'s word sums over the four lanes to 32 int32 row sums and adds
  /// rows 0..15 to lo, rows 16..31 to hi.
  REPARAM_LUT512_INLINE static void word_reduce(const word_sums& u, __m512i& lo,
                                                __m512i& hi) noexcept {
    const __m512i sl = _mm512_add_epi16(_mm512_shuffle_i64x2(u.al, u.bl, 0x44),
                                        _mm512_shuffle_i64x2(u.al, u.bl, 0xEE));
    const __m512i sh = _mm512_add_epi16(_mm512_shuffle_i64x2(u.ah, u.bh, 0x44),
                                        _mm512_shuffle_i64x2(u.ah, u.bh, 0xEE));
    // r's lanes: the sums of al, bl, ah, bh.
    __m512i r =
        _mm512_add_epi16(_mm512_shuffle_i64x2(sl, sh, 0x88), _mm512_shuffle_i64x2(sl, sh, 0xDD));
    // Even rows: word sums - 256 * odd-byte sums (lanes 0 and 2); odd rows: odd-byte sums.
    const __m512i odd = _mm512_slli_epi16(r, 8);
    r = _mm512_mask_sub_epi16(r, 0x00FF00FFu, r, _mm512_shuffle_i64x2(odd, odd, 0xF5));
    // Words [rows 0, 2, .., 14 | 1, 3, .., 15 | 16, 18, .., 30 | 17, .., 31] to row order.
    const __m512i rows =
        _mm512_set_epi16(31, 23, 30, 22, 29, 21, 28, 20, 27, 19, 26, 18, 25, 17, 24, 16, 15, 7, 14,
                         6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    r = _mm512_permutexvar_epi16(rows, r);
    lo = _mm512_add_epi32(lo, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(r)));
    hi = _mm512_add_epi32(hi, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(r, 1)));
  }

  /// Adds the biased lookups of one sign block (its indices x) in `table` to u.
  REPARAM_LUT512_INLINE static word_sums word_block(__m512i table, const indices2& x,
                                                    word_sums u) noexcept {
    const __m512i l = _mm512_shuffle_epi8(table, x.lo);
    const __m512i h = _mm512_shuffle_epi8(table, x.hi);
    u.al = _mm512_add_epi16(u.al, l);
    u.bl = _mm512_add_epi16(u.bl, _mm512_srli_epi16(l, 8));
    u.ah = _mm512_add_epi16(u.ah, h);
    u.bh = _mm512_add_epi16(u.bh, _mm512_srli_epi16(h, 8));
    return u;
  }

  /// Planes [p0, p0 + NP) (NP <= 2) of a record for one token: exact row sums, then the plane
  /// steps s = fma(alpha_p, float(I_p), s). IsDecoded: the indices come from `decoded`.
  template <int NP, bool IsDecoded>
  static void bw_planes(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                        const std::uint8_t* decoded, const std::int8_t* table, int p0,
                        bool is_prefetching, rows_f& s) noexcept {
    static_assert(NP == 1 || NP == 2, "bw_planes takes one or two planes");
    const index quads = w.quads_per_group;
    const int bits = w.bits;
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    const auto block = [&](index k, __m512i t, const word_sums& u) {
      return word_block(t, block_indices<IsDecoded>(record, decoded, k, bw_decode{}), u);
    };
    rows_i total0 = zero_i();
    rows_i total1 = zero_i();
    for (index q0 = 0; q0 < quads; q0 += word_quads) {
      const index q1 = std::min(quads, q0 + word_quads);
      const word_sums start = word_start(q1 - q0);
      word_sums u0 = start;  // plane p0, half 0
      word_sums v0 = start;  // plane p0, half 1
      word_sums u1 = start;
      word_sums v1 = start;
      for (index q = q0; q < q1; ++q) {
        const __m512i t = _mm512_xor_si512(_mm512_loadu_si512(table + q * lut_quad_entries), bias);
        const index first = (q * bits + p0) * 2;  // the block index of (q, p0, half 0)
        if (is_prefetching) {
          prefetch(record + first * lut_block_bytes, index{2} * NP);
        }
        u0 = block(first, t, u0);
        v0 = block(first + 1, t, v0);
        if constexpr (NP > 1) {
          u1 = block(first + 2, t, u1);
          v1 = block(first + 3, t, v1);
        }
      }
      word_reduce(u0, total0.r0, total0.r1);
      word_reduce(v0, total0.r2, total0.r3);
      if constexpr (NP > 1) {
        word_reduce(u1, total1.r0, total1.r1);
        word_reduce(v1, total1.r2, total1.r3);
      }
    }
    s = fma(sc + (p0)*lut_tile_rows, to_float(total0), s);
    if constexpr (NP > 1) {
      s = fma(sc + (p0 + 1) * lut_tile_rows, to_float(total1), s);
    }
  }

  template <bool IsDecoded>
  static void bw_token(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                       const std::uint8_t* decoded, const std::int8_t* table, bool is_prefetching,
                       rows_f& s) noexcept {
    int p0 = 0;
    for (; p0 + 2 <= w.bits; p0 += 2) {
      bw_planes<2, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
    }
    if (p0 < w.bits) {
      bw_planes<1, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
    }
  }

  /// One record, fast avx512bw, for tokens [b0, b0 + tokens).
  static void bw_fast_record(const bcq_lut_operand& w, const bcq_lut_tables& tables,
                             const std::uint8_t* record, index g, index b0, index tokens,
                             float* acc_block) noexcept {
    alignas(64) float scale_buffer[scale_buffer_floats];
    const float* sc = record_scales(w, record, scale_buffer);
    prefetch_scales(w, record);
    alignas(64) std::uint8_t decoded[decoded_bytes];
    const bool is_decoded = is_decoding(w, tokens);
    if (is_decoded) {
      decode_record(w, record, decoded, bw_decode{});
    }
    for (index b = 0; b < tokens; ++b) {
      const std::int8_t* table = tables.int8_quad(b0 + b, g, 0, w.quads_per_group);
      rows_f s = zero_f();
      if (is_decoded) {
        bw_token<true>(w, record, sc, decoded, table, false, s);
      } else {
        bw_token<false>(w, record, sc, decoded, table, b == 0, s);
      }
      finish_fast(w, tables, sc, g, b0 + b, s, acc_block + b * lut_tile_rows);
    }
  }
};

}  // namespace detail

/// The avx512bw path: Y[b, r] for rows [row_begin, row_end) and every token of `tables`, equal
/// bit for bit to the scalar reference of tables.mode (the contract of bcq_lut_rows_generic).
/// No allocation (about 24 KB of stack), noexcept, safe on disjoint row ranges.
template <class Arch>
void bcq_lut_rows_avx512bw(Arch, const bcq_lut_operand& w, const bcq_lut_tables& tables,
                           float* REPARAM_RESTRICT y, index y_row_stride, index row_begin,
                           index row_end) noexcept {
  using kernel = detail::lut512<Arch>;
  if (tables.mode == lut_mode::lossless) {
    kernel::run(w, tables, y, y_row_stride, row_begin, row_end,
                [&](const std::uint8_t* record, index g, index b0, index tokens, float* acc) {
                  kernel::lossless_record(w, tables, record, g, b0, tokens, acc);
                });
  } else {
    kernel::run(w, tables, y, y_row_stride, row_begin, row_end,
                [&](const std::uint8_t* record, index g, index b0, index tokens, float* acc) {
                  kernel::bw_fast_record(w, tables, record, g, b0, tokens, acc);
                });
  }
}

}  // namespace reparam::kernels::simd

#else
#define REPARAM_HAS_LUT_AVX512BW 0
#endif  // __AVX512F__ && __AVX512BW__

#if REPARAM_HAS_LUT_AVX512BW && REPARAM_WITH_AVX512VBMI_VNNI

#define REPARAM_HAS_LUT_AVX512VBMI 1

namespace reparam::kernels::simd {

namespace detail {

/// The vpermb + vpdpbusd fast path.
template <class Arch>
struct lut512_vbmi {
  using base = lut512<Arch>;
  using rows_i = typename base::rows_i;
  using rows_f = typename base::rows_f;

  /// A sign block's vpermb indices: the low (lo) and high (hi) nibbles or'ed with the k-group
  /// number in bits 4-5 (byte 4i + s belongs to k-group s).
  REPARAM_LUT512_INLINE static typename base::indices2 indices(__m512i v) noexcept {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const __m512i kgroup = _mm512_set1_epi32(0x30201000);
    // 0xEA: (a & b) | c
    return {_mm512_ternarylogic_epi32(v, nibble, kgroup, 0xEA),
            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), nibble, kgroup, 0xEA)};
  }
  /// indices as a function object (for decode_record and block_indices).
  struct decode {
    REPARAM_LUT512_INLINE typename base::indices2 operator()(__m512i v) const noexcept {
      return indices(v);
    }
  };

  /// Passes the sums through an empty asm statement: without it GCC 12 moves every vpdpbusd
  /// accumulator to a new register and back on each update (a register-allocation artifact
  /// of a tied operand whose sum later feeds vcvtdq2ps), two extra moves per lookup vector.
  REPARAM_LUT512_INLINE static void pin(rows_i& a) noexcept {
#if defined(__GNUC__)
    asm("" : "+v"(a.r0), "+v"(a.r1), "+v"(a.r2), "+v"(a.r3));
#else
    static_cast<void>(a);
#endif
  }

  /// Adds the lookups of the plane's sign blocks k (rows 0-31) and k + 1 (rows 32-63) in the
  /// quad's table t to a.
  template <bool IsDecoded>
  REPARAM_LUT512_INLINE static rows_i plane(const std::uint8_t* record, const std::uint8_t* decoded,
                                            index k, __m512i t, rows_i a) noexcept {
    const __m512i ones = _mm512_set1_epi8(1);
    const auto x = base::template block_indices<IsDecoded>(record, decoded, k, decode{});
    a.r0 = _mm512_dpbusd_epi32(a.r0, ones, _mm512_permutexvar_epi8(x.lo, t));
    a.r1 = _mm512_dpbusd_epi32(a.r1, ones, _mm512_permutexvar_epi8(x.hi, t));
    const auto y = base::template block_indices<IsDecoded>(record, decoded, k + 1, decode{});
    a.r2 = _mm512_dpbusd_epi32(a.r2, ones, _mm512_permutexvar_epi8(y.lo, t));
    a.r3 = _mm512_dpbusd_epi32(a.r3, ones, _mm512_permutexvar_epi8(y.hi, t));
    return a;
  }

  /// Planes [p0, p0 + NP) of a record for one token: exact int32 row sums, then the plane
  /// steps s = fma(alpha_p, float(I_p), s). IsDecoded: the indices come from `decoded`.
  template <int NP, bool IsDecoded>
  static void planes(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                     const std::uint8_t* decoded, const std::int8_t* table, int p0,
                     bool is_prefetching, rows_f& s) noexcept {
    const index quads = w.quads_per_group;
    const int bits = w.bits;
    rows_i a0 = base::zero_i();
    rows_i a1 = base::zero_i();
    rows_i a2 = base::zero_i();
    rows_i a3 = base::zero_i();
    for (index q = 0; q < quads; ++q) {
      const __m512i t = _mm512_loadu_si512(table + q * lut_quad_entries);
      const index first = (q * bits + p0) * 2;  // the block index of (q, p0, half 0)
      if (is_prefetching) {
        base::prefetch(record + first * lut_block_bytes, index{2} * NP);
      }
      a0 = plane<IsDecoded>(record, decoded, first, t, a0);
      if constexpr (NP > 1) {
        a1 = plane<IsDecoded>(record, decoded, first + 2, t, a1);
      }
      if constexpr (NP > 2) {
        a2 = plane<IsDecoded>(record, decoded, first + 4, t, a2);
      }
      if constexpr (NP > 3) {
        a3 = plane<IsDecoded>(record, decoded, first + 6, t, a3);
      }
    }
    pin(a0);
    s = base::fma(sc + (p0)*lut_tile_rows, base::to_float(a0), s);
    if constexpr (NP > 1) {
      pin(a1);
      s = base::fma(sc + (p0 + 1) * lut_tile_rows, base::to_float(a1), s);
    }
    if constexpr (NP > 2) {
      pin(a2);
      s = base::fma(sc + (p0 + 2) * lut_tile_rows, base::to_float(a2), s);
    }
    if constexpr (NP > 3) {
      pin(a3);
      s = base::fma(sc + (p0 + 3) * lut_tile_rows, base::to_float(a3), s);
    }
  }

  template <bool IsDecoded>
  static void token(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                    const std::uint8_t* decoded, const std::int8_t* table, bool is_prefetching,
                    rows_f& s) noexcept {
    for (int p0 = 0; p0 < w.bits; p0 += 4) {
      switch (std::min(4, w.bits - p0)) {
        case 1:
          planes<1, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
          break;
        case 2:
          planes<2, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
          break;
        case 3:
          planes<3, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
          break;
        default:
          planes<4, IsDecoded>(w, record, sc, decoded, table, p0, is_prefetching, s);
          break;
      }
    }
  }

  /// One record, fast, for tokens [b0, b0 + tokens).
  static void fast_record(const bcq_lut_operand& w, const bcq_lut_tables& tables,
                          const std::uint8_t* record, index g, index b0, index tokens,
                          float* acc_block) noexcept {
    alignas(64) float scale_buffer[base::scale_buffer_floats];
    const float* sc = base::record_scales(w, record, scale_buffer);
    base::prefetch_scales(w, record);
    alignas(64) std::uint8_t decoded[base::decoded_bytes];
    const bool is_decoded = base::is_decoding(w, tokens);
    if (is_decoded) {
      base::decode_record(w, record, decoded, decode{});
    }
    for (index b = 0; b < tokens; ++b) {
      const std::int8_t* table = tables.int8_quad(b0 + b, g, 0, w.quads_per_group);
      rows_f s = base::zero_f();
      if (is_decoded) {
        token<true>(w, record, sc, decoded, table, false, s);
      } else {
        token<false>(w, record, sc, decoded, table, b == 0, s);
      }
      base::finish_fast(w, tables, sc, g, b0 + b, s, acc_block + b * lut_tile_rows);
    }
  }
};

}  // namespace detail

/// The avx512vbmi_vnni path (fast mode: vpermb + vpdpbusd; lossless: the avx512bw code). Same
/// contract as bcq_lut_rows_avx512bw.
template <class Arch>
void bcq_lut_rows_avx512vbmi(Arch, const bcq_lut_operand& w, const bcq_lut_tables& tables,
                             float* REPARAM_RESTRICT y, index y_row_stride, index row_begin,
                             index row_end) noexcept {
  if (tables.mode == lut_mode::lossless) {
    bcq_lut_rows_avx512bw(Arch{}, w, tables, y, y_row_stride, row_begin, row_end);
    return;
  }
  detail::lut512<Arch>::run(
      w, tables, y, y_row_stride, row_begin, row_end,
      [&](const std::uint8_t* record, index g, index b0, index tokens, float* acc) {
        detail::lut512_vbmi<Arch>::fast_record(w, tables, record, g, b0, tokens, acc);
      });
}

}  // namespace reparam::kernels::simd

#else
#define REPARAM_HAS_LUT_AVX512VBMI 0
#endif  // REPARAM_HAS_LUT_AVX512BW && REPARAM_WITH_AVX512VBMI_VNNI

#undef REPARAM_LUT512_INLINE

#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP
