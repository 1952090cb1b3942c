// SPDX-License-Identifier: Apache-2.0
// The repacked ("LUT tile") layout of binary-coded weights that the lookup-table kernels stream,
// and the per-token activation tables they query (T-MAC, Wei et al. 2024, sec. 3-4; LUT-GEMM's
// table of signed sums). This header is the contract between the packer
// (reparam/shiftadd/packed.hpp), the table builder (kernels/bcq_lut_tables.hpp) and every kernel
// path (kernels/simd/bcq_lut_*.hpp): raw pointers and counts only, no Eigen.
//
// Lookup tables. Columns of a scale group are taken four at a time (a "k-group"); a k-group's
// table has 16 entries, entry e being the signed sum ((s0 x0 + s1 x1) + s2 x2) + s3 x3 with
// s_u = +1 if bit u of e is set, else -1, and x_u the activation of column 4k+u of the group. A
// weight row's four sign bits of one plane at those columns are the index e, so one lookup
// replaces four signed additions. Four consecutive k-groups form a "quad" (16 columns).
//
// Packed weights. Rows are cut into tiles of 64 (the last tile is padded with zero rows) and each
// scale group's G columns are padded to a multiple of 16 (padding columns hold sign bit 0, i.e.
// -1, and meet activation +0, so they add -0.0f, an exact identity). The packed stream is one
// contiguous, 64-byte aligned byte array of records, one per (tile, group), tile-major:
//
//   record(t, g) at data + (t * groups + g) * record_bytes:
//     signs    uint8  [quads][bits][2 halves][64]      quads = padded G / 16
//     scales   S      [bits][64 rows]                  alpha of (row 64t + i, g, plane); pad rows 0
//     offsets  S      [64 rows]                        only if has_offsets; pad rows 0
//   S is float, or IEEE binary16 (uint16 bits) when has_half_scales (half the scale bytes:
//   a 2-bit group of 128 then streams 36 instead of 40 bytes per row).
//
//   sign block (t, g, quad q, plane p, half h), 64 bytes: byte 4*i + s (i < 16, s < 4) holds
//     low nibble:  the index e of row 64t + 32h + i       at k-group 4q + s of group g
//     high nibble: the index e of row 64t + 32h + 16 + i  at k-group 4q + s of group g
//   i.e. four adjacent bytes are one row pair across the four k-groups of the quad, which lets
//   AVX-512 VBMI look up 16 rows x 4 k-groups with one vpermb and sum the four with one vpdpbusd;
//   the pshufb paths regroup a block per k-group with in-register shuffles.
//
// record_bytes = quads * bits * 128 + (bits + has_offsets) * 64 * sizeof(S), a multiple of 64.
//
// Tables of one token (built per call, laid out [groups][quads][4 k-groups][16 entries]):
//   lossless: float entries exactly as defined above; fast: int8 entries
//   q = clamp(nearbyint(T * (127 / m_g)), -127, 127) with m_g the largest |T| of group g, and the
//   group scale sigma_g = m_g / 127 (T-MAC's table quantization with one scale per weight group).
// Every token also gets sum_g, the plain sum of its activations in group g (for the offsets).
#ifndef REPARAM_KERNELS_BCQ_LUT_LAYOUT_HPP
#define REPARAM_KERNELS_BCQ_LUT_LAYOUT_HPP

#include <cstddef>
#include <cstdint>

#include <reparam/core/index.hpp>

namespace reparam::kernels {

/// Accuracy mode of the lookup-table product.
///  - lossless: float tables; every path equals kernels::reference::bcq_multiply_rows bit for bit.
///  - fast:     int8 tables with one scale per (token, group), integer accumulation (T-MAC);
///              every path equals kernels::reference::bcq_multiply_rows_fast bit for bit.
enum class lut_mode : std::uint8_t { lossless = 0, fast = 1 };

inline constexpr index lut_tile_rows = 64;    // rows per tile
inline constexpr index lut_half_rows = 32;    // rows per sign block
inline constexpr index lut_quad_cols = 16;    // columns per quad (4 k-groups of 4)
inline constexpr index lut_block_bytes = 64;  // bytes per sign block
inline constexpr index lut_entries = 16;      // entries per k-group table
/// Entries of one quad's tables (4 k-groups x 16 entries).
inline constexpr index lut_quad_entries = 4 * lut_entries;
/// Largest group size the kernels accept: integer partial sums stay exact in float (127 * G / 4
/// < 2^24).
inline constexpr index lut_max_group_size = index{1} << 19;

/// Quads per group of `group_size` columns (the group padded to a multiple of 16).
constexpr index lut_quads_per_group(index group_size) noexcept {
  return (group_size + lut_quad_cols - 1) / lut_quad_cols;
}

/// Bytes of one (tile, group) record.
constexpr index lut_record_bytes(index quads_per_group, int bits, bool has_offsets,
                                 bool has_half_scales = false) noexcept {
  return quads_per_group * bits * 2 * lut_block_bytes +
         (bits + (has_offsets ? 1 : 0)) * lut_tile_rows * (has_half_scales ? 2 : 4);
}

/// Raw view of packed weights (the layout above). `data` is 64-byte aligned and holds
/// row_tiles * groups * record_bytes bytes.
struct bcq_lut_operand {
  const std::uint8_t* data = nullptr;
  index rows = 0;
  index cols = 0;
  index group_size = 0;       // G; groups * G == cols
  index groups = 0;           // per row
  index quads_per_group = 0;  // lut_quads_per_group(G)
  index row_tiles = 0;        // ceil(rows / 64)
  index record_bytes = 0;     // lut_record_bytes(quads_per_group, bits, has_offsets)
  int bits = 0;               // planes, 1..8
  bool has_offsets = false;
  bool has_half_scales = false;  // scales and offsets stored as binary16

  const std::uint8_t* record(index tile, index group) const noexcept {
    return data + (tile * groups + group) * record_bytes;
  }
  /// The 64-byte sign block of (quad, plane, half) inside a record.
  static const std::uint8_t* block(const std::uint8_t* record, index quad, int plane, int half,
                                   int bits) noexcept {
    return record + ((quad * bits + plane) * 2 + half) * lut_block_bytes;
  }
  /// The start of a record's scales (after its sign blocks).
  const std::uint8_t* scale_bytes(const std::uint8_t* record) const noexcept {
    return record + quads_per_group * bits * 2 * lut_block_bytes;
  }
  /// The 64 float scales of `plane` inside a record (!has_half_scales).
  const float* scales(const std::uint8_t* record, int plane) const noexcept {
    return reinterpret_cast<const float*>(scale_bytes(record)) + plane * lut_tile_rows;
  }
  /// The 64 float offsets inside a record (has_offsets, !has_half_scales).
  const float* offsets(const std::uint8_t* record) const noexcept {
    return reinterpret_cast<const float*>(scale_bytes(record)) + bits * lut_tile_rows;
  }
  /// The (bits + has_offsets) * 64 binary16 scales then offsets of a record (has_half_scales).
  const std::uint16_t* half_scales(const std::uint8_t* record) const noexcept {
    return reinterpret_cast<const std::uint16_t*>(scale_bytes(record));
  }
  /// Values per record in the scale area: (bits + has_offsets) * 64.
  index scale_count() const noexcept { return (bits + (has_offsets ? 1 : 0)) * lut_tile_rows; }
};

/// Raw view of the activation tables of `batch` tokens (built by kernels::build_lut_tables).
/// Token b's entries start at entries + b * token_entries (float for lossless, int8 for fast),
/// laid out [groups][quads_per_group][4][16]; its group sums at group_sum + b * groups and (fast)
/// its group scales at group_scale + b * groups.
struct bcq_lut_tables {
  lut_mode mode = lut_mode::lossless;
  const float* float_entries = nullptr;       // lossless
  const std::int8_t* int8_entries = nullptr;  // fast
  const float* group_scale = nullptr;         // fast: sigma_g (NaN when the group is not finite)
  const float* group_sum = nullptr;           // both: sum of the group's activations
  index batch = 0;
  index groups = 0;
  index token_entries = 0;  // groups * quads_per_group * 64

  const float* float_quad(index token, index group, index quad, index quads) const noexcept {
    return float_entries + token * token_entries + (group * quads + quad) * lut_quad_entries;
  }
  const std::int8_t* int8_quad(index token, index group, index quad, index quads) const noexcept {
    return int8_entries + token * token_entries + (group * quads + quad) * lut_quad_entries;
  }
};

}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_BCQ_LUT_LAYOUT_HPP
