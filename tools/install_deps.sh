#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs whatever Debian 12 (bookworm) packages reparam needs and the machine lacks.
#   tools/install_deps.sh        build, test, bench and examples
#   tools/install_deps.sh --ci   also clang, clang-format, clang-tidy and the libFuzzer runtime
set -euo pipefail
packages=(cmake make g++ python3 catch2 libeigen3-dev libxsimd-dev libbenchmark-dev
          nlohmann-json3-dev)
if [ "${1:-}" = "--ci" ]; then
  packages+=(clang clang-format clang-tidy libclang-rt-14-dev git python3-matplotlib)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
