#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Quick start, command 1: install what is missing, build the release preset and run the main demo
# on the bundled real model (stories260K). Extra arguments go to the demo (e.g. --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
cmake --preset release
cmake --build --preset release --target reparam_demo
./build/release/examples/reparam_demo "$@"
