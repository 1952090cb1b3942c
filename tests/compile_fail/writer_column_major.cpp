// SPDX-License-Identifier: Apache-2.0
// A column-major matrix handed to the safetensors writer must not compile (no silent transpose).
#include <Eigen/Core>

#include <reparam/io/safetensors.hpp>

int main() {
  reparam::io::safetensors_writer writer;
#if defined(REPARAM_COMPILE_FAIL)
  Eigen::MatrixXf weights = Eigen::MatrixXf::Zero(2, 3);
#else
  reparam::matrix<float> weights = reparam::matrix<float>::Zero(2, 3);
#endif
  writer.add("w", weights);
  return 0;
}
