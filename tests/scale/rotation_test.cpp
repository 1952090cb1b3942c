// SPDX-License-Identifier: Apache-2.0
// The rotation folds of scale/rotation.hpp: the fast Walsh-Hadamard transform against the dense
// Sylvester matrix written from its definition H_ij = (-1)^popcount(i & j), the randomized
// Hadamard matrix's orthogonality and structure, and a small pre-norm transformer (embedding ->
// RMSNorm -> value/attention mixing -> output projection into the residual -> final RMSNorm ->
// head) run in double unrotated and rotated, after fold_norm_gain. Refusals are checked for their
// messages and for leaving the inputs untouched.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/rotation.hpp>

#include "support/random.hpp"
#include "support/scale_oracles.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::matrix;
using reparam::vector;
using reparam::scale::linear;
using reparam::scale::norm_affine;
using reparam::test::float_unit_roundoff;
using reparam::test::rng_stream;
using reparam::test::same;

/// The normalized Sylvester Hadamard matrix from its definition.
matrix<double> dense_hadamard(reparam::index n) {
  matrix<double> h(n, n);
  const double scale = 1.0 / std::sqrt(static_cast<double>(n));
  for (reparam::index i = 0; i < n; ++i) {
    for (reparam::index j = 0; j < n; ++j) {
      int parity = 0;
      for (auto bits = static_cast<std::uint64_t>(i & j); bits != 0; bits >>= 1) {
        parity ^= static_cast<int>(bits & 1u);
      }
      h(i, j) = parity != 0 ? -scale : scale;
    }
  }
  return h;
}

/// Entries U(-1, 1), drawn in storage (column-major) order.
matrix<double> random_unit_dense(rng_stream& rng, reparam::index rows, reparam::index cols) {
  matrix<double> m(rows, cols);
  for (reparam::index i = 0; i < m.size(); ++i) {
    m.data()[i] = rng.uniform(-1.0, 1.0);
  }
  return m;
}

/// W and b with entries U(-1, 1) (unlike scale_oracles.hpp's random_linear: b over the full range).
linear random_unit_linear(rng_stream& rng, reparam::index out, reparam::index in, bool has_bias) {
  linear l;
  l.weight = random_unit_dense(rng, out, in).cast<float>();
  if (has_bias) {
    l.bias = random_unit_dense(rng, out, 1).col(0).cast<float>();
  }
  return l;
}

double max_abs_diff(const matrix<double>& a, const matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

// --- The double oracle network ---

matrix<double> run_linear(const matrix<double>& x, const linear& l) {
  matrix<double> y = x * l.weight.cast<double>().transpose();
  if (l.bias.size() != 0) {
    y.rowwise() += l.bias.cast<double>().transpose();
  }
  return y;
}

/// RMSNorm (eps 1e-6) then * gain + bias, per token.
matrix<double> run_rms_norm(const matrix<double>& h, const norm_affine& norm) {
  matrix<double> out(h.rows(), h.cols());
  for (reparam::index t = 0; t < h.rows(); ++t) {
    const double ms = h.row(t).squaredNorm() / static_cast<double>(h.cols());
    const double inv = 1.0 / std::sqrt(ms + 1e-6);
    for (reparam::index c = 0; c < h.cols(); ++c) {
      const double bias = norm.bias.size() != 0 ? static_cast<double>(norm.bias[c]) : 0.0;
      out(t, c) = h(t, c) * inv * static_cast<double>(norm.gain[c]) + bias;
    }
  }
  return out;
}

struct tiny_transformer {
  linear embed;       // producer into the stream [D, in]
  norm_affine norm1;  // before the value projection
  linear value;       // consumer [D_v, D]
  linear out;         // producer into the stream [D, D_v]
  norm_affine final_norm;
  linear head;  // consumer [vocab, D]
};

/// embed -> h; h += out(P value(norm1(h))); logits = head(final_norm(h)).
matrix<double> run(const tiny_transformer& m, const matrix<double>& tokens,
                   const matrix<double>& mixing) {
  matrix<double> h = run_linear(tokens, m.embed);
  const matrix<double> v = run_linear(run_rms_norm(h, m.norm1), m.value);
  h += run_linear(mixing * v, m.out);
  return run_linear(run_rms_norm(h, m.final_norm), m.head);
}

}  // namespace

TEST_CASE("hadamard_transform_rows matches the dense Sylvester matrix and is an involution",
          "[scale][rotation]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e201);
  CAPTURE(seed);
  rng_stream rng(seed);
  for (const reparam::index n : {1, 2, 4, 8, 32, 64, 256}) {
    CAPTURE(n);
    const matrix<double> x = random_unit_dense(rng, 5, n);
    const matrix<double> expected = x * dense_hadamard(n).transpose();
    matrix<double> xd = x;
    reparam::scale::hadamard_transform_rows(xd);
    // Double: log2(n) butterfly stages plus the scale, each one rounding of sums of |x|.
    REQUIRE(max_abs_diff(xd, expected) <= 1e-14 * static_cast<double>(n));
    reparam::scale::hadamard_transform_rows(xd);
    REQUIRE(max_abs_diff(xd, x) <= 1e-14 * static_cast<double>(n));

    // Float: each output is a sum of n terms of magnitude <= max|x| / sqrt(n) formed in
    // log2(n) + 1 roundings, so |error| <= (log2(n) + 2) u sqrt(n) max|x|.
    matrix<float> xf = x.cast<float>();
    const matrix<double> expected_f = xf.cast<double>() * dense_hadamard(n).transpose();
    reparam::scale::hadamard_transform_rows(xf);
    const double stages = std::log2(static_cast<double>(n)) + 2.0;
    REQUIRE(max_abs_diff(xf.cast<double>(), expected_f) <=
            stages * float_unit_roundoff * std::sqrt(static_cast<double>(n)));
  }
}

TEST_CASE("hadamard_transform_rows works on row blocks and strided rows and refuses bad input",
          "[scale][rotation]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e202);
  CAPTURE(seed);
  rng_stream rng(seed);
  matrix<double> big = random_unit_dense(rng, 6, 8);
  const matrix<double> original = big;
  reparam::scale::hadamard_transform_rows(big.middleRows(2, 3));
  const matrix<double> h = dense_hadamard(8);
  REQUIRE(max_abs_diff(big.middleRows(2, 3), original.middleRows(2, 3) * h) <= 1e-13);
  REQUIRE(big.topRows(2) == original.topRows(2));
  REQUIRE(big.bottomRows(1) == original.bottomRows(1));

  // 4 rows of 8 columns inside a buffer with row stride 11: the padding is untouched.
  std::vector<double> buffer(44, 7.0);
  auto view = reparam::row_major_map(buffer.data(), 4, 8, 11);
  view = random_unit_dense(rng, 4, 8);
  const matrix<double> before = view;
  reparam::scale::hadamard_transform_rows(view);
  REQUIRE(max_abs_diff(view, before * h) <= 1e-13);
  for (reparam::index r = 0; r < 4; ++r) {
    for (reparam::index c = 8; c < 11; ++c) {
      REQUIRE(buffer[static_cast<std::size_t>(r * 11 + c)] == 7.0);
    }
  }

  matrix<float> six = matrix<float>::Ones(2, 6);
  REQUIRE_THROWS_WITH(
      reparam::scale::hadamard_transform_rows(six),
      Contains("scale::hadamard_transform_rows") && Contains("cols 6 is not a power of two"));
  matrix<float> empty(2, 0);
  REQUIRE_THROWS_WITH(reparam::scale::hadamard_transform_rows(empty), Contains("cols 0"));
  matrix<float> with_nan = matrix<float>::Ones(2, 4);
  with_nan(1, 3) = std::numeric_limits<float>::quiet_NaN();
  const matrix<float> nan_copy = with_nan;
  REQUIRE_THROWS_WITH(reparam::scale::hadamard_transform_rows(with_nan), Contains("x(1, 3) = nan"));
  REQUIRE(with_nan.topRows(1) == nan_copy.topRows(1));  // nothing was written
}

TEST_CASE("make_random_hadamard is an orthogonal signed Hadamard matrix fixed by its seed",
          "[scale][rotation]") {
  const reparam::index n = 64;
  const matrix<double> r = reparam::scale::make_random_hadamard(n, 1234);
  const matrix<double> h = dense_hadamard(n);
  REQUIRE(max_abs_diff(r * r.transpose(), matrix<double>::Identity(n, n)) <= 1e-14);
  int negative_rows = 0;
  for (reparam::index i = 0; i < n; ++i) {
    // Row i is s_i times row i of H: the ratio is one sign for the whole row.
    const double sign = r(i, 0) / h(i, 0);
    REQUIRE(std::abs(sign) == 1.0);
    REQUIRE(max_abs_diff(r.row(i), sign * h.row(i)) == 0.0);
    negative_rows += sign < 0.0 ? 1 : 0;
  }
  CAPTURE(negative_rows);
  REQUIRE(negative_rows > 8);  // random signs, not all +1 (P(<= 8 of 64) ~ 1e-9)
  REQUIRE(negative_rows < 56);
  REQUIRE(reparam::scale::make_random_hadamard(n, 1234) == r);
  REQUIRE(reparam::scale::make_random_hadamard(n, 1235) != r);
  REQUIRE(reparam::scale::make_random_hadamard(1, 7).cwiseAbs() == matrix<double>::Ones(1, 1));
  REQUIRE_THROWS_WITH(
      reparam::scale::make_random_hadamard(12, 1),
      Contains("scale::make_random_hadamard") && Contains("n 12 is not a power of two"));
  REQUIRE_THROWS_WITH(reparam::scale::make_random_hadamard(0, 1), Contains("n 0"));
}

TEST_CASE(
    "rotating the residual stream of a small pre-norm transformer leaves its logits "
    "unchanged",
    "[scale][rotation]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e203);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 9;
  const reparam::index inputs = 7;
  const reparam::index model = 16;
  const reparam::index value_dim = 12;
  const reparam::index vocab = 11;
  const bool is_hadamard = GENERATE(true, false);
  CAPTURE(is_hadamard);

  tiny_transformer m;
  m.embed = random_unit_linear(rng, model, inputs, true);
  m.embed.weight.row(3) *= 20.0f;  // an outlier channel in the stream
  m.norm1.gain = random_unit_dense(rng, model, 1).col(0).cast<float>().array() + 1.5f;
  m.norm1.bias = random_unit_dense(rng, model, 1).col(0).cast<float>();
  m.value = random_unit_linear(rng, value_dim, model, true);
  m.out = random_unit_linear(rng, model, value_dim, true);
  m.final_norm.gain = random_unit_dense(rng, model, 1).col(0).cast<float>();  // signs mixed
  m.head = random_unit_linear(rng, vocab, model, false);
  const matrix<double> x = random_unit_dense(rng, tokens, inputs);
  matrix<double> mixing = random_unit_dense(rng, tokens, tokens).cwiseAbs();  // any fixed mixing
  for (reparam::index t = 0; t < tokens; ++t) {
    mixing.row(t) /= mixing.row(t).sum();
  }

  matrix<double> rotation;
  if (is_hadamard) {
    rotation = reparam::scale::make_random_hadamard(model, seed);
  } else {
    // A random orthogonal matrix: Q of a QR decomposition (Householder) in double.
    rotation =
        Eigen::HouseholderQR<matrix<double>>(random_unit_dense(rng, model, model)).householderQ();
  }

  // 1. Fold the norm gains into their readers; 2. rotate every writer, norm and reader.
  const auto block1 = reparam::scale::fold_norm_gain(m.norm1, {m.value});
  const auto block2 = reparam::scale::fold_norm_gain(m.final_norm, {m.head});
  tiny_transformer rotated;
  rotated.embed = reparam::scale::fold_rotation_producer(m.embed, rotation);
  rotated.norm1 = reparam::scale::fold_rotation_norm(block1.norm, rotation);
  rotated.value = reparam::scale::fold_rotation_consumer(block1.consumers[0], rotation);
  rotated.out = reparam::scale::fold_rotation_producer(m.out, rotation);
  rotated.final_norm = reparam::scale::fold_rotation_norm(block2.norm, rotation);
  rotated.head = reparam::scale::fold_rotation_consumer(block2.consumers[0], rotation);
  REQUIRE(rotated.head.bias.size() == 0);
  REQUIRE(rotated.out.bias.size() == model);

  const matrix<double> logits = run(m, x, mixing);
  const matrix<double> logits_rotated = run(rotated, x, mixing);
  // Tolerance: every folded matrix is float(M R) with entry errors <= u sum_k |M_ik| |R_kj|
  // <= u sqrt(D) ||M_i|| (|R_kj| <= 1, rows of R unit norm), so each of the five folded stages
  // adds at most ~ u sqrt(D) relative to its output scale, and the RMSNorms pass relative errors
  // through unchanged: 5 stages * sqrt(16) * u ~ 1.2e-6 of max |logit|; 4e-6 leaves headroom.
  const double change = max_abs_diff(logits_rotated, logits) / logits.cwiseAbs().maxCoeff();
  CAPTURE(change);
  REQUIRE(change <= 4e-6);

  // The stream itself is rotated: R h (checked on the embedding output).
  const matrix<double> h = run_linear(x, m.embed);
  const matrix<double> h_rotated = run_linear(x, rotated.embed);
  REQUIRE(max_abs_diff(h_rotated, h * rotation.transpose()) <= 1e-5 * h.cwiseAbs().maxCoeff());

  SECTION("the Hadamard consumer fold is the row transform of the weight") {
    if (is_hadamard) {
      const matrix<double> h_only = dense_hadamard(model);
      const linear dense = reparam::scale::fold_rotation_consumer(m.head, h_only);
      matrix<float> fast = m.head.weight;
      reparam::scale::hadamard_transform_rows(fast);
      REQUIRE(max_abs_diff(fast.cast<double>(), dense.weight.cast<double>()) <= 1e-6);
    }
  }
}

TEST_CASE("the rotation folds refuse non-orthogonal, mis-sized rotations and unit-less norms",
          "[scale][rotation]") {
  const reparam::index n = 8;
  const matrix<double> r = reparam::scale::make_random_hadamard(n, 99);
  linear reader;
  reader.weight = matrix<float>::Ones(3, n);
  linear writer;
  writer.weight = matrix<float>::Ones(n, 5);
  writer.bias = vector<float>::Ones(n);
  const linear reader_copy = reader;
  const linear writer_copy = writer;

  SECTION("orthogonality tolerance: 1e-8 off passes, 1e-4 off is refused") {
    matrix<double> close = r;
    close(2, 5) += 1e-8;
    REQUIRE_NOTHROW(reparam::scale::fold_rotation_consumer(reader, close));
    matrix<double> far = r;
    far(2, 5) += 1e-4;
    REQUIRE_THROWS_WITH(
        reparam::scale::fold_rotation_consumer(reader, far),
        Contains("scale::fold_rotation_consumer") && Contains("rotation is not orthogonal"));
    REQUIRE_THROWS_WITH(reparam::scale::fold_rotation_producer(writer, 2.0 * r),
                        Contains("scale::fold_rotation_producer") && Contains("not orthogonal"));
    // A float-rounded orthogonal matrix is accepted (see rotation_orthogonality_tolerance).
    rng_stream rng(reparam::test::test_seed(0x5ca1e204));
    const matrix<double> q =
        Eigen::HouseholderQR<matrix<double>>(random_unit_dense(rng, n, n)).householderQ();
    const matrix<double> q_float = q.cast<float>().cast<double>();
    REQUIRE_NOTHROW(reparam::scale::fold_rotation_consumer(reader, q_float));
  }
  SECTION("sizes and values") {
    REQUIRE_THROWS_WITH(reparam::scale::fold_rotation_consumer(reader, r.topLeftCorner(4, 4)),
                        Contains("rotation is 4 x 4, expected 8 x 8"));
    REQUIRE_THROWS_WITH(
        reparam::scale::fold_rotation_producer(writer, matrix<double>(r.topRows(4))),
        Contains("expected a non-empty square matrix"));
    matrix<double> with_nan = r;
    with_nan(0, 1) = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THROWS_WITH(reparam::scale::fold_rotation_consumer(reader, with_nan),
                        Contains("rotation(0, 1) = nan"));
  }
  SECTION("a norm with a non-unit gain must go through fold_norm_gain first") {
    norm_affine norm;
    norm.gain = vector<float>::Ones(n);
    norm.gain[6] = 0.5f;
    REQUIRE_THROWS_WITH(reparam::scale::fold_rotation_norm(norm, r),
                        Contains("scale::fold_rotation_norm") && Contains("norm.gain[6] = 0.5") &&
                            Contains("fold_norm_gain"));
    norm.gain[6] = 1.0f;
    const norm_affine no_bias = reparam::scale::fold_rotation_norm(norm, r);
    REQUIRE(no_bias.bias.size() == 0);
    REQUIRE(no_bias.gain == vector<float>::Ones(n));
  }
  REQUIRE(same(reader, reader_copy));
  REQUIRE(same(writer, writer_copy));
}
