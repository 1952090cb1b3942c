#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the safetensors libFuzzer target for a while on the generated seed corpus.
# Usage: tests/fuzz/run.sh [build dir, default build/fuzz] [seconds, default 60]
# New inputs go to a scratch corpus (the seeds stay as generated); a crash leaves its input in
# <build dir>/tests/fuzz/ as crash-* (or leak-*, timeout-*, oom-*) and exits non-zero.
set -euo pipefail
build=${1:-build/fuzz}
seconds=${2:-60}
dir="$build/tests/fuzz"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$dir/safetensors_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -dict="$dir/safetensors.dict" -artifact_prefix="$dir/" -print_final_stats=1 \
  "$work" "$dir/corpus"
