// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA path of the LUT product on packed binary-coded weights (T-MAC, Wei et al. 2024,
// sec. 4), for CPUs without AVX-512; it uses AVX2 and FMA instructions only. Called through
// kernels::bcq_lut_rows (simd/bcq_lut.hpp); bcq_lut_rows_generic is the readable model of its
// loop, here tile -> token block -> group -> token -> chunk of quads -> plane -> half -> quad
// (a chunk is at most 64 quads, about 16 KB of sign blocks, so it stays in L1 across the plane
// and half passes; the next chunk or record is prefetched meanwhile).
//
// Fast mode (int8 tables). A 64-byte sign block (32 rows x 4 k-groups, byte 4i+s = rows i and
// i+16 of k-group s) is regrouped per k-group with two loads, two in-lane vpshufb (gather the
// bytes of each k-group into a dword per lane), two vpermd (pair the dwords of k-groups 0/2 in the
// low lanes and 1/3 in the high lanes) and vpunpck{l,h}bw (interleave rows i and i+8): the low
// and high 128-bit lanes of the two results hold the 16 bytes of k-groups [0|1] and [2|3], in
// row order i = 0, 8, 1, 9, ..., 7, 15, so that they line up with the quad's table loaded as two
// ymm [T0|T1] and [T2|T3]. The low nibbles (AND 0x0F) and high nibbles (vpsrlw 4 + AND) are looked
// up with vpshufb: 4 vpshufb for 128 lookups. The int8 results are widened to int16 (vpmaddubsw
// against bytes 1,0 takes the even bytes, vpsraw 8 the odd ones) and summed in int16 over a
// chunk, exact since |sum| <= 4 * 127 * 64 < 2^15; at the chunk end the two lanes (k-groups 0+2
// and 1+3) are added and widened to int32 in natural row order. The float epilogue then applies
// s = fma(alpha_p, float(I_p), s) per plane, acc = fma(sigma_g, s, acc) and the offsets, like
// kernels::reference::bcq_multiply_rows_fast. About 32 vector instructions per block.
//
// Lossless mode (float tables). The block is loaded as 16 dwords (two ymm, rows i = 0..7 and
// 8..15 of the half), dword i = the four k-groups' bytes of rows i and i+16; shifting it right by
// 8s (low rows) or 8s+4 (high rows) puts the k-group's index in the low bits. A 16-entry float
// lookup of 8 rows is two vpermps (entries 0-7 and 8-15, index bits 0-2) blended with vblendvps
// on index bit 3 (shifted left to the sign bit). Each row's partial sum adds its entries k-group
// by k-group in ascending k with plain vaddps, four independent chains of 8 rows per half, as in
// kernels::reference::bcq_multiply_rows, so the results agree bit for bit (NaN payloads too: the
// looked-up entries are the table's own).
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP

#if defined(__AVX2__) && defined(__FMA__)

#include <cstdint>

#include <reparam/config.hpp>
#include <reparam/core/half.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>

#include <immintrin.h>

#define REPARAM_HAS_LUT_AVX2 1

namespace reparam::kernels::simd {

namespace detail::lut_avx2 {

/// Tokens whose 64-row accumulators are kept on the stack while a tile's records are streamed.
inline constexpr index token_block = 16;
/// Quads per chunk of a group (about 16 KB of sign blocks, 64 quads at most). A chunk's sign
/// blocks are contiguous in the record and are read plane by plane, half by half, so the chunk,
/// its tables (64 bytes int8 or 256 bytes float per quad) and the next chunk being prefetched
/// must fit in L1 together; longer groups are cut into chunks, with the per-(plane, half) sums
/// kept on the stack in between. In the fast mode a chunk is also the span summed in int16
/// before widening to int32: 4 k-groups * 127 * 64 quads = 32512 < 2^15.
constexpr index chunk_quads(int bits) noexcept { return bits <= 2 ? 64 : 128 / bits; }

/// Prefetches the bytes one chunk ahead of chunk [q0, q1) of `record`: the next chunk, or for
/// the last one the rest of the record (scales, offsets) and the start of the next record (all
/// of it when a group is one chunk). The hardware prefetchers do not run far enough ahead of the
/// strided plane-by-plane reads on their own. Nothing past the packed stream is touched.
template <class Arch>
inline void prefetch_ahead(const bcq_lut_operand& w, const std::uint8_t* record, index q0,
                           index q1) noexcept {
  const index quad_bytes = index{w.bits} * 2 * lut_block_bytes;  // one quad of every plane
  const index quads = w.quads_per_group;
  const index chunk = chunk_quads(w.bits);
  const index distance = quads <= chunk ? w.record_bytes : chunk * quad_bytes;
  const index total = w.row_tiles * w.groups * w.record_bytes;
  const index at = record - w.data;
  const index begin = at + q0 * quad_bytes + distance;
  index end = at + (q1 == quads ? w.record_bytes : q1 * quad_bytes) + distance;
  end = end < total ? end : total;
  for (index offset = begin; offset < end; offset += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w.data + offset), _MM_HINT_T0);
  }
}

template <class Arch>
inline __m256i load_bytes(const void* p) noexcept {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

/// Rows i and i + 8 (int16 sums of the even and odd byte positions, lanes = two k-groups) summed
/// over the lanes and widened: rows 0-7 added to `first`, rows 8-15 to `second` (int32).
template <class Arch>
inline void flush_rows(__m256i even, __m256i odd, __m256i& first, __m256i& second) noexcept {
  const __m256i sum = _mm256_add_epi16(_mm256_permute2x128_si256(even, odd, 0x20),
                                       _mm256_permute2x128_si256(even, odd, 0x31));
  first = _mm256_add_epi32(first, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sum)));
  second = _mm256_add_epi32(second, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sum, 1)));
}

/// Fast mode, one (token, group, plane, half) over quads [q0, q1) (at most 64):
/// adds the exact sums of the int8 entries of the half's 32 rows to counts (int32, rows 0-7,
/// 8-15, 16-23, 24-31 of the half).
template <class Arch>
inline void fast_half(const bcq_lut_operand& w, const std::uint8_t* record,
                      const std::int8_t* table, int plane, int half, index q0, index q1,
                      __m256i counts[4]) noexcept {
  // In-lane gather of k-group s's four bytes (4i+s) into dword s of each lane.
  const __m256i regroup = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0,
                                           4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  // Dwords [k0 i0-3, k0 i4-7, k2 i0-3, k2 i4-7 | k1 ..., k3 ...].
  const __m256i spread = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i even_bytes = _mm256_set1_epi16(1);  // bytes 1, 0: vpmaddubsw keeps even bytes
  __m256i low_even = _mm256_setzero_si256();
  __m256i low_odd = _mm256_setzero_si256();
  __m256i high_even = _mm256_setzero_si256();
  __m256i high_odd = _mm256_setzero_si256();
  for (index q = q0; q < q1; ++q) {
    const std::uint8_t* block = bcq_lut_operand::block(record, q, plane, half, w.bits);
    const __m256i a =
        _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(load_bytes<Arch>(block), regroup), spread);
    const __m256i b = _mm256_permutevar8x32_epi32(
        _mm256_shuffle_epi8(load_bytes<Arch>(block + 32), regroup), spread);
    const __m256i x01 = _mm256_unpacklo_epi8(a, b);  // [k-group 0 | k-group 1]
    const __m256i x23 = _mm256_unpackhi_epi8(a, b);  // [k-group 2 | k-group 3]
    const std::int8_t* entries = table + q * lut_quad_entries;
    const __m256i t01 = load_bytes<Arch>(entries);
    const __m256i t23 = load_bytes<Arch>(entries + 32);
    const __m256i l01 = _mm256_shuffle_epi8(t01, _mm256_and_si256(x01, nibble));
    const __m256i h01 =
        _mm256_shuffle_epi8(t01, _mm256_and_si256(_mm256_srli_epi16(x01, 4), nibble));
    const __m256i l23 = _mm256_shuffle_epi8(t23, _mm256_and_si256(x23, nibble));
    const __m256i h23 =
        _mm256_shuffle_epi8(t23, _mm256_and_si256(_mm256_srli_epi16(x23, 4), nibble));
    low_even = _mm256_add_epi16(low_even, _mm256_add_epi16(_mm256_maddubs_epi16(even_bytes, l01),
                                                           _mm256_maddubs_epi16(even_bytes, l23)));
    low_odd = _mm256_add_epi16(
        low_odd, _mm256_add_epi16(_mm256_srai_epi16(l01, 8), _mm256_srai_epi16(l23, 8)));
    high_even =
        _mm256_add_epi16(high_even, _mm256_add_epi16(_mm256_maddubs_epi16(even_bytes, h01),
                                                     _mm256_maddubs_epi16(even_bytes, h23)));
    high_odd = _mm256_add_epi16(
        high_odd, _mm256_add_epi16(_mm256_srai_epi16(h01, 8), _mm256_srai_epi16(h23, 8)));
  }
  flush_rows<Arch>(low_even, low_odd, counts[0], counts[1]);
  flush_rows<Arch>(high_even, high_odd, counts[2], counts[3]);
}

/// The record's float scales (plane p at p * 64, offsets at bits * 64): in place, or converted
/// exactly from binary16 into `buffer` (vcvtph2ps with F16C, else the scalar conversion).
template <class Arch>
inline const float* record_scales(const bcq_lut_operand& w, const std::uint8_t* record,
                                  float* REPARAM_RESTRICT buffer) noexcept {
  if (!w.has_half_scales) {
    return w.scales(record, 0);
  }
  const std::uint16_t* half = w.half_scales(record);
#if defined(__F16C__)
  for (index i = 0; i < w.scale_count(); i += 8) {
    _mm256_store_ps(buffer + i,
                    _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(half + i))));
  }
#else
  f16_to_float_n(half, buffer, w.scale_count());
#endif
  return buffer;
}

/// acc[64] = fma(offset, group_sum, acc) when the matrix has offsets.
template <class Arch>
inline void add_offsets(const bcq_lut_operand& w, const float* sc, float group_sum,
                        float* REPARAM_RESTRICT acc) noexcept {
  if (w.has_offsets) {
    const float* offsets = sc + w.bits * lut_tile_rows;
    const __m256 sum = _mm256_set1_ps(group_sum);
    for (index i = 0; i < lut_tile_rows; i += 8) {
      _mm256_storeu_ps(
          acc + i, _mm256_fmadd_ps(_mm256_loadu_ps(offsets + i), sum, _mm256_loadu_ps(acc + i)));
    }
  }
}

/// Fast mode, one (token, group): acc[64] = fma(sigma, s, acc) with s = sum over the planes in
/// order of fma(alpha_p, I_p, s), then the offsets. `is_leader` (the first token of a pass over
/// the record) issues the prefetches.
template <class Arch>
inline void fast_group(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                       const std::int8_t* table, float sigma, float group_sum, bool is_leader,
                       float* REPARAM_RESTRICT acc) noexcept {
  const index quads = w.quads_per_group;
  alignas(32) std::int32_t kept[8][2][4][8];  // counts of the finished chunks
  __m256 plane_sum[8];                        // rows 8v .. 8v+7
  for (__m256& s : plane_sum) {
    s = _mm256_setzero_ps();
  }
  const index chunk = chunk_quads(w.bits);
  for (index q0 = 0; q0 < quads; q0 += chunk) {
    const index q1 = quads - q0 < chunk ? quads : q0 + chunk;
    if (is_leader) {
      prefetch_ahead<Arch>(w, record, q0, q1);
    }
    for (int p = 0; p < w.bits; ++p) {
      for (int h = 0; h < 2; ++h) {
        __m256i counts[4];
        for (int i = 0; i < 4; ++i) {
          counts[i] = q0 == 0 ? _mm256_setzero_si256()
                              : _mm256_load_si256(reinterpret_cast<const __m256i*>(kept[p][h][i]));
        }
        fast_half<Arch>(w, record, table, p, h, q0, q1, counts);
        if (q1 < quads) {
          for (int i = 0; i < 4; ++i) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(kept[p][h][i]), counts[i]);
          }
        } else {
          const float* alpha = sc + p * lut_tile_rows + lut_half_rows * h;
          for (index i = 0; i < 4; ++i) {
            __m256& s = plane_sum[index{4} * h + i];
            s = _mm256_fmadd_ps(_mm256_loadu_ps(alpha + 8 * i), _mm256_cvtepi32_ps(counts[i]), s);
          }
        }
      }
    }
  }
  const __m256 scale = _mm256_set1_ps(sigma);
  for (index v = 0; v < 8; ++v) {
    _mm256_storeu_ps(acc + 8 * v,
                     _mm256_fmadd_ps(scale, plane_sum[v], _mm256_loadu_ps(acc + 8 * v)));
  }
  add_offsets<Arch>(w, sc, group_sum, acc);
}

/// The float entries of one 16-entry table (`low` = entries 0-7, `high` = 8-15) at the 4-bit
/// indices in bits 0-3 of each dword of `entry`; `select` holds index bit 3 in its sign bit.
template <class Arch>
inline __m256 lookup(__m256 low, __m256 high, __m256i entry, __m256i select) noexcept {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, entry),
                          _mm256_permutevar8x32_ps(high, entry), _mm256_castsi256_ps(select));
}

/// Lossless mode: partial += k-group S's entries of rows i (Nibble 0) or i + 16 (Nibble 1) for
/// the eight row pairs whose four index bytes are the dwords of `d`.
template <class Arch, int S, int Nibble>
inline __m256 add_kgroup(__m256 partial, const float* table, __m256i d) noexcept {
  constexpr int shift = 8 * S + 4 * Nibble;  // the index's lowest bit
  const __m256i entry = shift == 0 ? d : _mm256_srli_epi32(d, shift);
  const __m256i select = shift == 28 ? d : _mm256_slli_epi32(d, 28 - shift);
  const float* entries = table + S * lut_entries;
  return _mm256_add_ps(
      partial, lookup<Arch>(_mm256_loadu_ps(entries), _mm256_loadu_ps(entries + 8), entry, select));
}

template <class Arch, int S>
inline void add_kgroup_rows(__m256 partial[4], const float* table, __m256i d0,
                            __m256i d1) noexcept {
  partial[0] = add_kgroup<Arch, S, 0>(partial[0], table, d0);  // rows 0-7
  partial[1] = add_kgroup<Arch, S, 0>(partial[1], table, d1);  // rows 8-15
  partial[2] = add_kgroup<Arch, S, 1>(partial[2], table, d0);  // rows 16-23
  partial[3] = add_kgroup<Arch, S, 1>(partial[3], table, d1);  // rows 24-31
}

/// Lossless mode, one (token, group): acc[64] = fma(alpha_p, partial_p, acc) plane by plane, the
/// partials summed k-group by k-group in ascending k (chunk after chunk); then the offsets.
template <class Arch>
inline void lossless_group(const bcq_lut_operand& w, const std::uint8_t* record, const float* sc,
                           const float* table, float group_sum, bool is_leader,
                           float* REPARAM_RESTRICT acc) noexcept {
  const index quads = w.quads_per_group;
  alignas(32) float kept[8][2][4][8];  // partials of the finished chunks
  const index chunk = chunk_quads(w.bits);
  for (index q0 = 0; q0 < quads; q0 += chunk) {
    const index q1 = quads - q0 < chunk ? quads : q0 + chunk;
    if (is_leader) {
      prefetch_ahead<Arch>(w, record, q0, q1);
    }
    for (int p = 0; p < w.bits; ++p) {
      for (int h = 0; h < 2; ++h) {
        __m256 partial[4];
        for (int i = 0; i < 4; ++i) {
          partial[i] = q0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(kept[p][h][i]);
        }
        for (index q = q0; q < q1; ++q) {
          const std::uint8_t* block = bcq_lut_operand::block(record, q, p, h, w.bits);
          const __m256i d0 = load_bytes<Arch>(block);       // row pairs 0-7
          const __m256i d1 = load_bytes<Arch>(block + 32);  // row pairs 8-15
          const float* entries = table + q * lut_quad_entries;
          add_kgroup_rows<Arch, 0>(partial, entries, d0, d1);
          add_kgroup_rows<Arch, 1>(partial, entries, d0, d1);
          add_kgroup_rows<Arch, 2>(partial, entries, d0, d1);
          add_kgroup_rows<Arch, 3>(partial, entries, d0, d1);
        }
        if (q1 < quads) {
          for (int i = 0; i < 4; ++i) {
            _mm256_store_ps(kept[p][h][i], partial[i]);
          }
        } else {
          const float* alpha = sc + p * lut_tile_rows + lut_half_rows * h;
          for (index i = 0; i < 4; ++i) {
            float* a = acc + lut_half_rows * h + 8 * i;
            _mm256_storeu_ps(
                a, _mm256_fmadd_ps(_mm256_loadu_ps(alpha + 8 * i), partial[i], _mm256_loadu_ps(a)));
          }
        }
      }
    }
  }
  add_offsets<Arch>(w, sc, group_sum, acc);
}

}  // namespace detail::lut_avx2

/// Y[b, r] for rows r in [row_begin, row_end) and every token b of `tables` (y rows
/// y_row_stride floats apart), with AVX2 + FMA: equal bit for bit to
/// kernels::reference::bcq_multiply_rows (lossless tables) or bcq_multiply_rows_fast (fast
/// tables) on the unpacked weights, like bcq_lut_rows_generic. Only the rows in the range are
/// written (tiles straddling it are computed whole). Safe to call concurrently on disjoint row
/// ranges. No allocation (16 tokens x 64 rows of float accumulators on the stack), noexcept.
/// `Arch` is unused: the kernel is written with AVX2 + FMA intrinsics.
template <class Arch>
void bcq_lut_rows_avx2(Arch, const bcq_lut_operand& w, const bcq_lut_tables& tables,
                       float* REPARAM_RESTRICT y, index y_row_stride, index row_begin,
                       index row_end) noexcept {
  namespace impl = detail::lut_avx2;
  const index quads = w.quads_per_group;
  const bool is_fast = tables.mode == lut_mode::fast;
  const index tile_end = (row_end + lut_tile_rows - 1) / lut_tile_rows;
  alignas(32) float acc[impl::token_block][lut_tile_rows];
  alignas(32) float scale_buffer[9 * lut_tile_rows];
  for (index tile = row_begin / lut_tile_rows; tile < tile_end; ++tile) {
    for (index b0 = 0; b0 < tables.batch; b0 += impl::token_block) {
      const index tokens =
          tables.batch - b0 < impl::token_block ? tables.batch - b0 : impl::token_block;
      for (index t = 0; t < tokens; ++t) {
        for (index i = 0; i < lut_tile_rows; i += 8) {
          _mm256_store_ps(&acc[t][i], _mm256_setzero_ps());
        }
      }
      for (index g = 0; g < w.groups; ++g) {
        const std::uint8_t* record = w.record(tile, g);
        const float* sc = impl::record_scales<Arch>(w, record, scale_buffer);
        for (index t = 0; t < tokens; ++t) {
          const index b = b0 + t;
          const float group_sum = tables.group_sum[b * tables.groups + g];
          if (is_fast) {
            impl::fast_group<Arch>(w, record, sc, tables.int8_quad(b, g, 0, quads),
                                   tables.group_scale[b * tables.groups + g], group_sum, t == 0,
                                   acc[t]);
          } else {
            impl::lossless_group<Arch>(w, record, sc, tables.float_quad(b, g, 0, quads), group_sum,
                                       t == 0, acc[t]);
          }
        }
      }
      const index first = tile * lut_tile_rows;
      const bool is_whole = first >= row_begin && first + lut_tile_rows <= row_end;
      for (index t = 0; t < tokens; ++t) {
        float* yb = y + (b0 + t) * y_row_stride + first;
        if (is_whole) {
          for (index i = 0; i < lut_tile_rows; i += 8) {
            _mm256_storeu_ps(yb + i, _mm256_load_ps(&acc[t][i]));
          }
        } else {
          for (index i = 0; i < lut_tile_rows; ++i) {
            if (first + i >= row_begin && first + i < row_end) {
              yb[i] = acc[t][i];
            }
          }
        }
      }
    }
  }
}

}  // namespace reparam::kernels::simd

#else
#define REPARAM_HAS_LUT_AVX2 0
#endif  // defined(__AVX2__) && defined(__FMA__)

#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP
