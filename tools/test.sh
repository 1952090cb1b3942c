#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Quick start, command 2: install what is missing, build the release preset (tests, examples and
# benchmarks, -march=native, -Werror) and run the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
cmake --preset release
cmake --build --preset release
ctest --preset release "$@"
