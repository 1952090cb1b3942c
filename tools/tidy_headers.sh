#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# clang-tidy over every public header (one generated TU each), with the repo's .clang-tidy:
# warnings in include/reparam are errors.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root/.clang-tidy" "$work/"
sources=()
while IFS= read -r header; do
  rel=${header#"$root/include/"}
  tu="$work/$(tr '/.' '__' <<<"$rel").cpp"
  printf '#include <%s>\n' "$rel" >"$tu"
  sources+=("$tu")
done < <(find "$root/include/reparam" -name '*.hpp' | sort)
# Each TU is independent: run two at a time.
printf '%s\n' "${sources[@]}" |
  xargs -P 2 -I{} clang-tidy --quiet {} -- -std=c++17 -I "$root/include" -isystem /usr/include/eigen3 \
    2> >(grep -v 'warnings generated' >&2)
# The ISA-specific kernels compile to nothing without their -m flags: check them again as built
# for an AVX2-only CPU and for an AVX-512 VBMI+VNNI one.
simd=()
while IFS= read -r header; do
  rel=${header#"$root/include/"}
  simd+=("$rel")
done < <(find "$root/include/reparam/kernels/simd" -name '*.hpp' | sort)
for march in haswell icelake-server; do
  for rel in "${simd[@]}"; do
    tu="$work/$march-$(tr '/.' '__' <<<"$rel").cpp"
    printf '#include <%s>\n' "$rel" >"$tu"
    echo "$tu"
  done
done | xargs -P 2 -I{} sh -c 'march=$(basename "$1" | cut -d- -f1); [ "$march" = icelake ] && march=icelake-server; clang-tidy --quiet "$1" -- -std=c++17 -march="$march" -I "$2/include" -isystem /usr/include/eigen3' _ {} "$root" \
  2> >(grep -v 'warnings generated' >&2)
echo "clang-tidy: ${#sources[@]} headers clean (+ ${#simd[@]} kernel headers for haswell and icelake-server)"
