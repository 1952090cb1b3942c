// SPDX-License-Identifier: Apache-2.0
// Row ranges: how a caller's thread pool splits work. Every transform that scales with rows has a
// `<verb>_rows(..., row_range)` form; calls on disjoint ranges are safe to run concurrently.
#ifndef REPARAM_CORE_ROW_RANGE_HPP
#define REPARAM_CORE_ROW_RANGE_HPP

#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>

namespace reparam {

/// Half-open range [begin, end) of rows.
struct row_range {
  index begin = 0;
  index end = 0;

  constexpr index size() const noexcept { return end - begin; }
  constexpr bool empty() const noexcept { return end <= begin; }
  friend constexpr bool operator==(row_range a, row_range b) noexcept {
    return a.begin == b.begin && a.end == b.end;
  }
  friend constexpr bool operator!=(row_range a, row_range b) noexcept { return !(a == b); }
};

/// The range of all `rows` rows.
constexpr row_range all_rows(index rows) noexcept { return {0, rows}; }

/// Part `part` of `parts` near-equal pieces of [0, total). Every boundary except `total` is a
/// multiple of `granularity` (e.g. a kernel's row tile), so pieces never split a tile. Pieces may
/// be empty when there are more parts than tiles. No allocation.
inline row_range split_rows_part(index total, index parts, index part, index granularity = 1) {
  constexpr const char* function = "reparam::split_rows_part";
  detail::check(total >= 0, function, "total ", total, " is negative");
  detail::check(parts >= 1, function, "parts ", parts, " must be >= 1");
  detail::check(part >= 0 && part < parts, function, "part ", part, " is outside [0, ", parts, ")");
  detail::check(granularity >= 1, function, "granularity ", granularity, " must be >= 1");
  const index tiles = (total + granularity - 1) / granularity;
  const index base = tiles / parts;
  const index extra = tiles % parts;
  // The first `extra` parts get one more tile.
  const index first_tile = part * base + (part < extra ? part : extra);
  const index tile_count = base + (part < extra ? 1 : 0);
  const index begin = first_tile * granularity;
  const index end = (first_tile + tile_count) * granularity;
  return {begin < total ? begin : total, end < total ? end : total};
}

/// All `parts` pieces of [0, total) as split_rows_part gives them, in order; they cover it
/// exactly. Allocates the vector (use split_rows_part inside a worker thread).
inline std::vector<row_range> split_rows(index total, index parts, index granularity = 1) {
  std::vector<row_range> out;
  detail::check(parts >= 1, "reparam::split_rows", "parts ", parts, " must be >= 1");
  detail::check(total >= 0, "reparam::split_rows", "total ", total, " is negative");
  out.reserve(static_cast<std::size_t>(parts));
  for (index p = 0; p < parts; ++p) {
    out.push_back(split_rows_part(total, parts, p, granularity));
  }
  return out;
}

namespace detail {

/// Validates `rows` against a matrix with `row_count` rows, for `<verb>_rows` entry points.
inline void check_row_range(const char* function, row_range rows, index row_count) {
  check(rows.begin >= 0 && rows.begin <= rows.end && rows.end <= row_count, function, "row range [",
        rows.begin, ", ", rows.end, ") is not inside [0, ", row_count, ")");
}

}  // namespace detail
}  // namespace reparam

#endif  // REPARAM_CORE_ROW_RANGE_HPP
