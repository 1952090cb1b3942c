// SPDX-License-Identifier: Apache-2.0
// Strict UTF-8 validation (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF),
// the same rule nlohmann::json applies, so the safetensors writer can reject bad names up front
// instead of failing inside json::dump. Not API.
#ifndef REPARAM_IO_DETAIL_UTF8_HPP
#define REPARAM_IO_DETAIL_UTF8_HPP

#include <cstddef>
#include <string_view>

namespace reparam::io::detail {

/// True when `text` is well-formed UTF-8. No allocation; thread safe.
inline bool is_valid_utf8(std::string_view text) noexcept {
  std::size_t i = 0;
  const std::size_t size = text.size();
  while (i < size) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    // Length of the sequence and the allowed range of its second byte (RFC 3629, section 4).
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      length = 2;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      length = 3;
      if (lead == 0xe0) {
        low = 0xa0;  // no overlong 3-byte forms
      } else if (lead == 0xed) {
        high = 0x9f;  // no UTF-16 surrogates
      }
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      length = 4;
      if (lead == 0xf0) {
        low = 0x90;  // no overlong 4-byte forms
      } else if (lead == 0xf4) {
        high = 0x8f;  // nothing above U+10FFFF
      }
    } else {
      return false;  // continuation byte, overlong 2-byte lead (c0, c1), or f5..ff
    }
    if (size - i < length) {
      return false;
    }
    const auto second = static_cast<unsigned char>(text[i + 1]);
    if (second < low || second > high) {
      return false;
    }
    for (std::size_t k = 2; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if (next < 0x80 || next > 0xbf) {
        return false;
      }
    }
    i += length;
  }
  return true;
}

}  // namespace reparam::io::detail

#endif  // REPARAM_IO_DETAIL_UTF8_HPP
