// SPDX-License-Identifier: Apache-2.0
// reparam version: the single source of truth, parsed by CMake for the package version.
#ifndef REPARAM_VERSION_HPP
#define REPARAM_VERSION_HPP

#define REPARAM_VERSION_MAJOR 0
#define REPARAM_VERSION_MINOR 1
#define REPARAM_VERSION_PATCH 0

/// Encoded as MAJOR * 10000 + MINOR * 100 + PATCH.
#define REPARAM_VERSION \
  (REPARAM_VERSION_MAJOR * 10000 + REPARAM_VERSION_MINOR * 100 + REPARAM_VERSION_PATCH)

namespace reparam {

struct version_info {
  int major;
  int minor;
  int patch;
};

/// The version of the headers in use.
constexpr version_info version() noexcept {
  return {REPARAM_VERSION_MAJOR, REPARAM_VERSION_MINOR, REPARAM_VERSION_PATCH};
}

}  // namespace reparam

#endif  // REPARAM_VERSION_HPP
