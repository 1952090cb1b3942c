// SPDX-License-Identifier: Apache-2.0
// How the examples split the bundled text into evaluation and calibration tokens: evaluation
// windows from the start of the paragraph stream, calibration windows from its end.
#ifndef REPARAM_EXAMPLES_COMMON_TEXT_SPLIT_HPP
#define REPARAM_EXAMPLES_COMMON_TEXT_SPLIT_HPP

#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>

namespace examples {

/// The last `count` windows of `window` tokens of `stream` (aligned to its end), as calibration
/// inputs: the calibration split of the examples, disjoint from evaluation windows
/// taken from the start of the same stream as long as the stream is long enough (checked).
inline std::vector<std::vector<int>> tail_windows(const std::vector<int>& stream,
                                                  reparam::index count, reparam::index window,
                                                  reparam::index reserved_head = 0) {
  const auto total = static_cast<reparam::index>(stream.size());
  reparam::detail::check(
      count >= 1 && window >= 1 && reserved_head >= 0 && count * window + reserved_head <= total,
      "examples::tail_windows", "the stream has ", total, " tokens, fewer than ", count,
      " windows of ", window, " after the first ", reserved_head);
  std::vector<std::vector<int>> windows;
  for (reparam::index w = 0; w < count; ++w) {
    const auto first = stream.end() - (count - w) * window;
    windows.emplace_back(first, first + window);
  }
  return windows;
}

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_TEXT_SPLIT_HPP
