// SPDX-License-Identifier: Apache-2.0
// split_rows: exact covers, tile-aligned boundaries, balanced sizes; argument errors.
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/row_range.hpp>

namespace {
using index_t = reparam::index;
}  // namespace
using reparam::row_range;

TEST_CASE("split_rows covers 0..total exactly with tile-aligned, balanced pieces",
          "[core][row_range]") {
  for (index_t total : {0, 1, 2, 7, 31, 64, 100, 1023, 4096}) {
    for (index_t parts : {1, 2, 3, 8, 17}) {
      for (index_t granularity : {1, 4, 16, 64}) {
        CAPTURE(total, parts, granularity);
        const std::vector<row_range> pieces = reparam::split_rows(total, parts, granularity);
        REQUIRE(static_cast<index_t>(pieces.size()) == parts);
        index_t next = 0;
        index_t max_tiles = 0;
        index_t min_tiles = total;
        for (const row_range& r : pieces) {
          REQUIRE(r.begin == next);
          REQUIRE(r.end >= r.begin);
          if (r.end != total) {
            REQUIRE(r.end % granularity == 0);
          }
          const index_t tiles = (r.size() + granularity - 1) / granularity;
          max_tiles = std::max(max_tiles, tiles);
          min_tiles = std::min(min_tiles, tiles);
          next = r.end;
        }
        REQUIRE(next == total);
        // Balanced: piece sizes in tiles differ by at most one.
        REQUIRE(max_tiles - min_tiles <= 1);
      }
    }
  }
}

TEST_CASE("split_rows_part equals the matching piece of split_rows", "[core][row_range]") {
  const auto pieces = reparam::split_rows(1000, 7, 32);
  for (index_t p = 0; p < 7; ++p) {
    REQUIRE(reparam::split_rows_part(1000, 7, p, 32) == pieces[static_cast<std::size_t>(p)]);
  }
}

TEST_CASE("split_rows and check_row_range reject bad arguments with clear messages",
          "[core][row_range]") {
  REQUIRE_THROWS_WITH(reparam::split_rows(10, 0), "reparam::split_rows: parts 0 must be >= 1");
  REQUIRE_THROWS_WITH(reparam::split_rows(-1, 2), "reparam::split_rows: total -1 is negative");
  REQUIRE_THROWS_WITH(reparam::split_rows_part(10, 2, 2),
                      "reparam::split_rows_part: part 2 is outside [0, 2)");
  REQUIRE_THROWS_WITH(reparam::split_rows_part(10, 2, 0, 0),
                      "reparam::split_rows_part: granularity 0 must be >= 1");
  REQUIRE_THROWS_WITH(reparam::split_rows(10, 2, -3),
                      "reparam::split_rows_part: granularity -3 must be >= 1");
  REQUIRE_NOTHROW(reparam::detail::check_row_range("op", {2, 5}, 5));
  REQUIRE_THROWS_WITH(reparam::detail::check_row_range("fam::op_rows", {3, 9}, 8),
                      "fam::op_rows: row range [3, 9) is not inside [0, 8)");
  REQUIRE_THROWS_AS(reparam::detail::check_row_range("op", {4, 3}, 8), reparam::error);
}
