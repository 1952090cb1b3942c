#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checks the layering of include/reparam (STYLE.md section 1) by grepping #include lines:
#   core     -> std, Eigen only (tensor_views.hpp alone may include the Tensor module)
#   kernels  -> core, xsimd
#   families -> core, kernels, their own family; never another family, never io
#   io       -> core, kernels, any family (it serializes their formats), nlohmann json
# Nothing in include/ includes examples/, tests/ or bench/.
set -euo pipefail
cd "$(dirname "$0")/../include/reparam"
families="shiftadd structural scale gumbel unlearn"
status=0
fail() { echo "layering: $1"; status=1; }

while IFS= read -r -d '' file; do
  rel=${file#./}
  layer=${rel%%/*}
  [ "$layer" = "$rel" ] && layer=top
  while IFS= read -r inc; do
    target=$(sed -E 's/.*#include [<"]([^>"]+)[>"].*/\1/' <<<"$inc")
    case "$target" in
      reparam/*) dep=${target#reparam/}; dep_layer=${dep%%/*}; [ "$dep_layer" = "$dep" ] && dep_layer=top ;;
      *examples/*|*tests/*|*bench/*) fail "$rel includes $target"; continue ;;
      *) dep_layer=external ;;
    esac
    case "$layer" in
      core)
        if [ "$dep_layer" != core ] && [ "$target" != reparam/config.hpp ] && [ "$dep_layer" != external ]; then
          fail "$rel (core) includes $target"
        fi
        if [[ "$target" == xsimd/* || "$target" == nlohmann/* ]]; then fail "$rel (core) includes $target"; fi
        if [[ "$target" == unsupported/Eigen/* && "$rel" != core/tensor_views.hpp ]]; then
          fail "$rel includes $target (only core/tensor_views.hpp may)"
        fi ;;
      kernels)
        case "$dep_layer" in core|kernels|external|top) ;; *) fail "$rel (kernels) includes $target" ;; esac ;;
      io)
        case "$dep_layer" in io|core|kernels|external|top|shiftadd|structural|scale|gumbel|unlearn) ;;
          *) fail "$rel (io) includes $target" ;; esac ;;
      top) ;;
      *)
        if [[ " $families " == *" $layer "* ]]; then
          case "$dep_layer" in
            core|kernels|external|top|"$layer") ;;
            *) fail "$rel ($layer) includes $target" ;;
          esac
        else
          fail "$rel is in unknown layer $layer"
        fi ;;
    esac
  done < <(grep -E '^\s*#\s*include' "$file" || true)
done < <(find . -name '*.hpp' -print0)

[ $status -eq 0 ] && echo "layering: ok"
exit $status
