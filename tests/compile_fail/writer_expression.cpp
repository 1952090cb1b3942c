// SPDX-License-Identifier: Apache-2.0
// An unevaluated expression handed to the safetensors writer must not compile: call .eval().
#include <reparam/io/safetensors.hpp>

int main() {
  reparam::io::safetensors_writer writer;
  reparam::matrix<float> weights = reparam::matrix<float>::Zero(2, 3);
#if defined(REPARAM_COMPILE_FAIL)
  writer.add("w", weights * 2.f);
#else
  writer.add("w", (weights * 2.f).eval());
#endif
  return 0;
}
