// SPDX-License-Identifier: Apache-2.0
// The test data and double oracle pieces shared by the scale family's fold, reparameterize and
// rotation tests: a Philox stream of uniform doubles, random dense matrices, vectors and linear
// layers drawn from it, the linear layer y = W x + b written as explicit loops in double, the
// error of a folded output in units of float roundoff of its magnitude bound, and exact equality
// of layers (the inputs-untouched checks).
#ifndef REPARAM_TESTS_SUPPORT_SCALE_ORACLES_HPP
#define REPARAM_TESTS_SUPPORT_SCALE_ORACLES_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>

namespace reparam::test {

// The vocabulary the fold tests name unqualified (after `using namespace reparam::test`).
using reparam::matrix;
using reparam::vector;
using scale::channel_affine;
using scale::linear;
using scale::norm_affine;

/// Unit roundoff of float: every folded parameter is one double value rounded once to float.
constexpr double float_unit_roundoff = 0x1p-24;

/// Uniform doubles from one Philox stream: data depends only on the seed and the order of draws.
class rng_stream {
 public:
  explicit rng_stream(std::uint64_t seed) : engine_(seed, 0) {}

  double uniform(double lo, double hi) {
    const std::uint32_t high = engine_();
    const std::uint32_t low = engine_();
    return lo + (hi - lo) * uniform_open01_double(high, low);
  }

  /// 10^U(lo_exp, hi_exp): positive scales spread over decades.
  double log_uniform(double lo_exp, double hi_exp) {
    return std::pow(10.0, uniform(lo_exp, hi_exp));
  }

 private:
  philox_engine engine_;
};

/// A rows x cols matrix of U(lo, hi), drawn row by row.
inline matrix<double> random_dense(rng_stream& rng, index rows, index cols, double lo, double hi) {
  matrix<double> m(rows, cols);
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < cols; ++j) {
      m(i, j) = rng.uniform(lo, hi);
    }
  }
  return m;
}

/// A float weight [rows, cols] of U(-1, 1), drawn row by row.
inline matrix<float> random_weight(rng_stream& rng, index rows, index cols) {
  return random_dense(rng, rows, cols, -1.0, 1.0).cast<float>();
}

inline vector<float> random_vector(rng_stream& rng, index size, double lo, double hi) {
  vector<float> v(size);
  for (index i = 0; i < size; ++i) {
    v[i] = static_cast<float>(rng.uniform(lo, hi));
  }
  return v;
}

/// W [out, in] of U(-1, 1) and, with has_bias, b [out] of U(-0.5, 0.5).
inline linear random_linear(rng_stream& rng, index out, index in, bool has_bias) {
  linear l;
  l.weight = random_weight(rng, out, in);
  if (has_bias) {
    l.bias = random_vector(rng, out, -0.5, 0.5);
  }
  return l;
}

/// y[t, i] = sum_j W[i, j] x[t, j] + b[i] (b may be empty), with explicit loops in double.
inline matrix<double> run_linear(const matrix<double>& x, const matrix<float>& w,
                                 const vector<float>& b) {
  matrix<double> y(x.rows(), w.rows());
  for (index t = 0; t < x.rows(); ++t) {
    for (index i = 0; i < w.rows(); ++i) {
      double acc = b.size() != 0 ? static_cast<double>(b[i]) : 0.0;
      for (index j = 0; j < x.cols(); ++j) {
        acc += static_cast<double>(w(i, j)) * x(t, j);
      }
      y(t, i) = acc;
    }
  }
  return y;
}

inline matrix<double> run_linear(const matrix<double>& x, const linear& l) {
  return run_linear(x, l.weight, l.bias);
}

/// The largest |folded - oracle| / (float_unit_roundoff * bound) over all entries.
inline double worst_roundoff_ratio(const matrix<double>& folded, const matrix<double>& oracle,
                                   const matrix<double>& bound) {
  double worst = 0.0;
  for (index i = 0; i < oracle.size(); ++i) {
    worst = std::max(worst, std::abs(folded.data()[i] - oracle.data()[i]) /
                                (float_unit_roundoff * bound.data()[i]));
  }
  return worst;
}

inline bool same(const linear& a, const linear& b) {
  return a.weight == b.weight && a.bias.size() == b.bias.size() && a.bias == b.bias;
}

inline bool same(const norm_affine& a, const norm_affine& b) {
  return a.gain == b.gain && a.bias.size() == b.bias.size() && a.bias == b.bias;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_SCALE_ORACLES_HPP
