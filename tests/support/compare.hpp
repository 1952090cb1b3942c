// SPDX-License-Identifier: Apache-2.0
// Error statistics for comparing a result with its oracle: compute everything first, then
// REQUIRE once and print the statistics on failure (gemmlowp's habit).
#ifndef REPARAM_TESTS_SUPPORT_COMPARE_HPP
#define REPARAM_TESTS_SUPPORT_COMPARE_HPP

#include <cmath>
#include <ostream>

#include <reparam/core/index.hpp>

namespace reparam::test {

struct error_stats {
  double max_abs = 0.0;   // max |a - b|
  double max_rel = 0.0;   // max |a - b| / max(|b|, tiny)
  double mean_abs = 0.0;  // mean |a - b|
  index first_bad = -1;   // first index outside the tolerance, -1 if none
  index mismatches = 0;   // count outside the tolerance
  index count = 0;

  bool ok() const { return mismatches == 0; }
};

inline std::ostream& operator<<(std::ostream& out, const error_stats& s) {
  return out << "{max_abs " << s.max_abs << ", max_rel " << s.max_rel << ", mean_abs " << s.mean_abs
             << ", mismatches " << s.mismatches << "/" << s.count << ", first_bad " << s.first_bad
             << "}";
}

/// Compares `count` values of `actual` against `expected` with |a - e| <= abs_tol + rel_tol * |e|.
/// NaN matches only NaN; infinities must match exactly.
template <class A, class E>
error_stats compare(const A* actual, const E* expected, index count, double abs_tol,
                    double rel_tol = 0.0) {
  error_stats s;
  s.count = count;
  double sum = 0.0;
  for (index i = 0; i < count; ++i) {
    const auto a = static_cast<double>(actual[i]);
    const auto e = static_cast<double>(expected[i]);
    bool good = false;
    double diff = 0.0;
    if (std::isnan(a) || std::isnan(e)) {
      good = std::isnan(a) && std::isnan(e);
    } else if (std::isinf(a) || std::isinf(e)) {
      good = a == e;
    } else {
      diff = std::abs(a - e);
      good = diff <= abs_tol + rel_tol * std::abs(e);
      s.max_abs = diff > s.max_abs ? diff : s.max_abs;
      const double rel = diff / (std::abs(e) > 1e-30 ? std::abs(e) : 1e-30);
      s.max_rel = rel > s.max_rel ? rel : s.max_rel;
      sum += diff;
    }
    if (!good) {
      if (s.first_bad < 0) s.first_bad = i;
      ++s.mismatches;
    }
  }
  s.mean_abs = count > 0 ? sum / static_cast<double>(count) : 0.0;
  return s;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_COMPARE_HPP
