// SPDX-License-Identifier: Apache-2.0
// The fold initialisers of scale/reparameterize.hpp against independent oracles: RepQ-ViT's
// integer-code equivalence checked with a per-channel and a layer-wise quantizer written here
// (round half even in double), the dequantized identity W' x^' + c' = W x^ + c and the
// bias-update-order pitfall; SmoothQuant and OmniQuant on hand-computed examples and their
// balance properties on data; AWQ's grid search on a synthetic loss, its consumer loss against a
// direct simulation of the folded block, and its benefit on an activation-outlier problem with a
// 3-bit per-row weight quantizer written here. No quantizer.hpp function is called.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/reparameterize.hpp>

#include "support/random.hpp"
#include "support/scale_oracles.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::scale::uniform_quantizer;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): test file

/// LayerNorm-output-like activations [tokens, channels]: each channel its own center and range
/// (ranges over three decades), as after a LayerNorm's gain and bias.
matrix<double> ln_like_activations(rng_stream& rng, reparam::index tokens,
                                   reparam::index channels) {
  matrix<double> x(tokens, channels);
  for (reparam::index c = 0; c < channels; ++c) {
    const double range = rng.log_uniform(-2.0, 1.0);
    const double center = range * rng.uniform(-1.5, 1.5);
    for (reparam::index t = 0; t < tokens; ++t) {
      x(t, c) = center + range * rng.uniform(-1.0, 1.0);
    }
  }
  return x;
}

// --- Oracle quantizers (independent of quantizer.hpp) ---

/// Round half to even: std::nearbyint in the default FE_TONEAREST mode (tests never change it).
double round_even(double x) { return std::nearbyint(x); }

/// q = clamp(round_even(x / scale) + zero, 0, 2^bits - 1) in double (zero may be non-integer,
/// which is what the official RepQ-ViT code produces with an unrounded mean zero point).
double code_of(double x, double scale, double zero, int bits) {
  const double top = std::ldexp(1.0, bits) - 1.0;
  return std::clamp(round_even(x / scale) + zero, 0.0, top);
}

/// A per-column (channel-wise) asymmetric quantizer from the min/max of each column, widened to
/// include 0: scale = (hi - lo) / (2^b - 1), zero = round_even(-lo / scale).
uniform_quantizer per_channel_minmax(const matrix<double>& x, int bits) {
  uniform_quantizer q;
  q.spec.bits = bits;
  q.spec.axis = reparam::scale::granularity::per_column;
  q.scale.resize(x.cols());
  q.zero_point.resize(x.cols());
  const double top = std::ldexp(1.0, bits) - 1.0;
  for (reparam::index c = 0; c < x.cols(); ++c) {
    const double lo = std::min(x.col(c).minCoeff(), 0.0);
    const double hi = std::max(x.col(c).maxCoeff(), 0.0);
    q.scale[c] = static_cast<float>((hi - lo) / top);
    q.zero_point[c] = static_cast<float>(round_even(-lo / static_cast<double>(q.scale[c])));
  }
  return q;
}

/// Fake-quantizes each row of w with its own asymmetric min/max b-bit grid (AWQ's weight
/// quantizer with one group per row): scale = (max - min) / (2^b - 1),
/// zero = clamp(-round_even(min / scale), 0, 2^b - 1), w^ = scale (q - zero).
matrix<float> fake_quantize_rows(const matrix<float>& w, int bits) {
  const double top = std::ldexp(1.0, bits) - 1.0;
  matrix<float> out(w.rows(), w.cols());
  for (reparam::index i = 0; i < w.rows(); ++i) {
    const double lo = static_cast<double>(w.row(i).minCoeff());
    const double hi = static_cast<double>(w.row(i).maxCoeff());
    const double scale = std::max(hi - lo, 1e-5) / top;
    const double zero = std::clamp(-round_even(lo / scale), 0.0, top);
    for (reparam::index j = 0; j < w.cols(); ++j) {
      const double q = code_of(static_cast<double>(w(i, j)), scale, zero, bits);
      out(i, j) = static_cast<float>(scale * (q - zero));
    }
  }
  return out;
}

/// (x - t) / r per column, in double.
matrix<double> apply_affine(const matrix<double>& x, const channel_affine& a) {
  matrix<double> out(x.rows(), x.cols());
  for (reparam::index t = 0; t < x.rows(); ++t) {
    for (reparam::index c = 0; c < x.cols(); ++c) {
      const double shift = a.has_shift() ? a.shift[c] : 0.0;
      out(t, c) = (x(t, c) - shift) / a.scale[c];
    }
  }
  return out;
}

uniform_quantizer hand_quantizer(std::initializer_list<float> scales,
                                 std::initializer_list<float> zeros) {
  uniform_quantizer q;
  q.spec.bits = 4;
  q.spec.axis = reparam::scale::granularity::per_column;
  q.scale = vector<float>(static_cast<reparam::index>(scales.size()));
  q.zero_point = vector<float>(static_cast<reparam::index>(zeros.size()));
  reparam::index i = 0;
  for (const float s : scales) {
    q.scale[i++] = s;
  }
  i = 0;
  for (const float z : zeros) {
    q.zero_point[i++] = z;
  }
  return q;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RepQ-ViT

TEST_CASE("repq_vit_reparameterize matches hand-computed values and rounds z half to even",
          "[scale][reparameterize]") {
  // scales {1, 3}: s~ = 2, r = {0.5, 1.5}. zero points {2, 5}: mean 3.5 -> 4 (even).
  const uniform_quantizer q = hand_quantizer({1.0f, 3.0f}, {2.0f, 5.0f});
  const auto rounded = reparam::scale::repq_vit_reparameterize(q, true);
  REQUIRE(rounded.layer_quantizer.spec.axis == reparam::scale::granularity::per_tensor);
  REQUIRE(rounded.layer_quantizer.spec.bits == 4);
  REQUIRE(rounded.layer_quantizer.scale.size() == 1);
  REQUIRE(rounded.layer_quantizer.scale[0] == 2.0f);
  REQUIRE(rounded.layer_quantizer.zero_point[0] == 4.0f);
  REQUIRE(rounded.affine.scale[0] == 0.5);
  REQUIRE(rounded.affine.scale[1] == 1.5);
  // t = -scale (zero - z~) = {-1 (2 - 4), -3 (5 - 4)}.
  REQUIRE(rounded.affine.shift[0] == 2.0);
  REQUIRE(rounded.affine.shift[1] == -3.0);

  // Official code: z~ = 3.5, t = {-1 (2 - 3.5), -3 (5 - 3.5)}.
  const auto official = reparam::scale::repq_vit_reparameterize(q, false);
  REQUIRE(official.layer_quantizer.zero_point[0] == 3.5f);
  REQUIRE(official.affine.shift[0] == 1.5);
  REQUIRE(official.affine.shift[1] == -4.5);

  // Ties go to even: 2.5 -> 2, -2.5 -> -2 (RepQ-ViT does not clamp zero points), 0.5 -> 0.
  REQUIRE(reparam::scale::repq_vit_reparameterize(hand_quantizer({1.0f, 1.0f}, {2.0f, 3.0f}))
              .layer_quantizer.zero_point[0] == 2.0f);
  REQUIRE(reparam::scale::repq_vit_reparameterize(hand_quantizer({1.0f, 1.0f}, {-3.0f, -2.0f}))
              .layer_quantizer.zero_point[0] == -2.0f);
  REQUIRE(reparam::scale::repq_vit_reparameterize(hand_quantizer({1.0f, 1.0f}, {0.0f, 1.0f}))
              .layer_quantizer.zero_point[0] == 0.0f);
  REQUIRE(reparam::scale::repq_vit_reparameterize(
              hand_quantizer({1.0f, 1.0f, 1.0f}, {0.0f, 1.0f, 1.0f}))
              .layer_quantizer.zero_point[0] == 1.0f);  // 2/3 rounds up
}

TEST_CASE("repq_vit_reparameterize gives layer-wise codes equal to the channel-wise codes",
          "[scale][reparameterize]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e101);
  CAPTURE(seed);
  rng_stream rng(seed);
  const int bits = GENERATE(4, 8);
  CAPTURE(bits);
  const reparam::index tokens = 256;
  const reparam::index channels = 48;
  const matrix<double> calib = ln_like_activations(rng, tokens, channels);
  uniform_quantizer q = per_channel_minmax(calib, bits);
  // The official mode differs only when the mean zero point is not an integer: make sure of it
  // (moving one zero point by 1 keeps a valid quantizer).
  if (std::fmod(static_cast<double>(q.zero_point.sum()), static_cast<double>(channels)) == 0.0) {
    q.zero_point[0] += q.zero_point[0] > 0.0f ? -1.0f : 1.0f;
  }
  // Evaluate on calibration data stretched by 1.25, so codes clamp at both ends too.
  const matrix<double> x = 1.25 * calib;

  const auto count_mismatches = [&](bool round_target, reparam::index* clamped) {
    const auto result = reparam::scale::repq_vit_reparameterize(q, round_target);
    const double s_t = static_cast<double>(result.layer_quantizer.scale[0]);
    const double z_t = static_cast<double>(result.layer_quantizer.zero_point[0]);
    const matrix<double> folded = apply_affine(x, result.affine);
    const double top = std::ldexp(1.0, bits) - 1.0;
    reparam::index mismatches = 0;
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index c = 0; c < channels; ++c) {
        const double channel_code = code_of(x(t, c), static_cast<double>(q.scale[c]),
                                            static_cast<double>(q.zero_point[c]), bits);
        const double layer_code = code_of(folded(t, c), s_t, z_t, bits);
        mismatches += channel_code != layer_code ? 1 : 0;
        if (clamped != nullptr && (channel_code == 0.0 || channel_code == top)) {
          ++*clamped;
        }
      }
    }
    return mismatches;
  };

  reparam::index clamped = 0;
  const reparam::index exact = count_mismatches(true, &clamped);
  CAPTURE(clamped);
  REQUIRE(clamped > 0);  // the clamp is exercised
  REQUIRE(exact == 0);

  // The official unrounded mean zero point: the layer "codes" round(x'/s~) + z~ are off the
  // integer grid, so they disagree with the channel codes wherever nothing clamps.
  const reparam::index official = count_mismatches(false, nullptr);
  const double rate = static_cast<double>(official) / static_cast<double>(tokens * channels);
  CAPTURE(official, rate);
  const float z_mean =
      reparam::scale::repq_vit_reparameterize(q, false).layer_quantizer.zero_point[0];
  CAPTURE(z_mean);
  REQUIRE(z_mean != std::floor(z_mean));
  REQUIRE(rate > 0.5);
}

TEST_CASE(
    "repq_vit_reparameterize keeps W' x^' + c' equal to W x^ + c, and c' needs the "
    "original W",
    "[scale][reparameterize]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e102);
  CAPTURE(seed);
  rng_stream rng(seed);
  const int bits = 4;
  const reparam::index tokens = 64;
  const reparam::index channels = 32;
  const reparam::index out = 10;
  const matrix<double> x = ln_like_activations(rng, tokens, channels);
  const uniform_quantizer q = per_channel_minmax(x, bits);
  const auto result = reparam::scale::repq_vit_reparameterize(q, true);
  const double s_t = static_cast<double>(result.layer_quantizer.scale[0]);
  const double z_t = static_cast<double>(result.layer_quantizer.zero_point[0]);

  // x^ (channel-wise) and x^' (layer-wise on x' = (x - t) / r), dequantized in double.
  const matrix<double> folded_x = apply_affine(x, result.affine);
  matrix<double> x_hat(tokens, channels);
  matrix<double> x_hat_folded(tokens, channels);
  for (reparam::index t = 0; t < tokens; ++t) {
    for (reparam::index c = 0; c < channels; ++c) {
      const auto s = static_cast<double>(q.scale[c]);
      const auto z = static_cast<double>(q.zero_point[c]);
      x_hat(t, c) = s * (code_of(x(t, c), s, z, bits) - z);
      x_hat_folded(t, c) = s_t * (code_of(folded_x(t, c), s_t, z_t, bits) - z_t);
    }
  }

  linear layer;
  layer.weight = random_weight(rng, out, channels);
  layer.bias = vector<float>(out);
  for (reparam::index i = 0; i < out; ++i) {
    layer.bias[i] = static_cast<float>(rng.uniform(-0.5, 0.5));
  }
  const linear folded = reparam::scale::fold_into_consumer(layer, result.affine);
  const matrix<double> y = run_linear(x_hat, layer.weight, layer.bias);
  const matrix<double> y_folded = run_linear(x_hat_folded, folded.weight, folded.bias);

  // Bound per output: |W| |x^| + |c| + 2 |W| |t|; W' and c' each carry one float rounding, so
  // the difference is <= 2u of it (see fold_test.cpp); 3u leaves headroom.
  matrix<double> t_abs(1, channels);
  for (reparam::index c = 0; c < channels; ++c) {
    t_abs(0, c) = std::abs(result.affine.shift[c]);
  }
  const matrix<float> w_abs = layer.weight.cwiseAbs();
  const vector<float> b_abs = layer.bias.cwiseAbs();
  const matrix<double> bound = run_linear(x_hat.cwiseAbs(), w_abs, b_abs).rowwise() +
                               2.0 * run_linear(t_abs, w_abs, vector<float>()).row(0);
  const double worst = worst_roundoff_ratio(y_folded, y, bound);
  CAPTURE(worst);
  REQUIRE(worst <= 3.0);

  // The pitfall: c' = c + W' t with the already-scaled W' instead of the original W.
  vector<float> wrong_bias(out);
  for (reparam::index i = 0; i < out; ++i) {
    double acc = static_cast<double>(layer.bias[i]);
    for (reparam::index c = 0; c < channels; ++c) {
      acc += static_cast<double>(folded.weight(i, c)) * result.affine.shift[c];
    }
    wrong_bias[i] = static_cast<float>(acc);
  }
  const matrix<double> y_wrong = run_linear(x_hat_folded, folded.weight, wrong_bias);
  const double wrong_change = (y_wrong - y).cwiseAbs().maxCoeff() / y.cwiseAbs().maxCoeff();
  CAPTURE(wrong_change);
  REQUIRE(wrong_change > 1e-3);
}

TEST_CASE("repq_vit_reparameterize refuses quantizers it cannot fold", "[scale][reparameterize]") {
  const uniform_quantizer good = hand_quantizer({1.0f, 2.0f}, {3.0f, 4.0f});
  SECTION("granularity") {
    uniform_quantizer q = good;
    q.spec.axis = reparam::scale::granularity::per_row;
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q),
                        Contains("scale::repq_vit_reparameterize") && Contains("per_column"));
  }
  SECTION("bits") {
    uniform_quantizer q = good;
    q.spec.bits = 17;
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q), Contains("bits 17"));
  }
  SECTION("sizes") {
    uniform_quantizer q = good;
    q.zero_point = vector<float>::Zero(3);
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q),
                        Contains("zero_point has 3 entries, expected 2"));
    q.scale.resize(0);
    q.zero_point.resize(0);
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q), Contains("empty"));
  }
  SECTION("scales and zero points") {
    uniform_quantizer q = good;
    q.scale[1] = 0.0f;
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q),
                        Contains("scale[1] = 0") && Contains("> 0 and finite"));
    q.scale[1] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q), Contains("scale[1] = nan"));
    q = good;
    q.zero_point[0] = 2.5f;
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q),
                        Contains("zero_point[0] = 2.5") && Contains("integer"));
    q = good;
    q.spec.is_symmetric = true;
    REQUIRE_THROWS_WITH(reparam::scale::repq_vit_reparameterize(q),
                        Contains("zero_point[0] = 3") && Contains("symmetric"));
  }
}

// ---------------------------------------------------------------------------------------------
// SmoothQuant and OmniQuant

TEST_CASE(
    "smoothquant_affine matches hand-computed scales with the weight max shared by "
    "consumers",
    "[scale][reparameterize]") {
  vector<float> act(4);
  act << 4.0f, 1.0f, 0.25f, 9.0f;
  matrix<float> w1(2, 4);
  w1 << 0.5f, -4.0f, 0.1f, 1.0f,  //
      -1.0f, 2.0f, 0.25f, 0.0f;
  matrix<float> w2(1, 4);
  w2 << 0.25f, 1.0f, -0.2f, -4.0f;  // column 3's max |W| = 4 comes from w2 only
  // max |W_j| over both = {1, 4, 0.25, 4}.
  const std::vector<const matrix<float>*> both = {&w1, &w2};

  const channel_affine half = reparam::scale::smoothquant_affine(act, both, 0.5);
  REQUIRE_FALSE(half.has_shift());
  const double expected_half[] = {2.0, 0.5, 1.0, 1.5};  // sqrt(a / w)
  const channel_affine zero = reparam::scale::smoothquant_affine(act, both, 0.0);
  const double expected_zero[] = {1.0, 0.25, 4.0, 0.25};  // 1 / w
  const channel_affine one = reparam::scale::smoothquant_affine(act, both, 1.0);
  const double expected_one[] = {4.0, 1.0, 0.25, 9.0};  // a
  for (reparam::index j = 0; j < 4; ++j) {
    CAPTURE(j);
    REQUIRE(half.scale[j] == Approx(expected_half[j]).epsilon(1e-14));
    REQUIRE(zero.scale[j] == Approx(expected_zero[j]).epsilon(1e-14));
    REQUIRE(one.scale[j] == Approx(expected_one[j]).epsilon(1e-14));
  }
  // With w1 alone, column 3 would use max |W| = 1 and r = 3.
  REQUIRE(reparam::scale::smoothquant_affine(act, {&w1}, 0.5).scale[3] ==
          Approx(3.0).epsilon(1e-14));

  SECTION("clamps: weight max and r at 1e-5, the activation max not (smooth.py)") {
    vector<float> small(3);
    small << 0.0f, 1e-12f, 1.0f;
    matrix<float> w(2, 3);
    w << 1.0f, -1.0f, 0.0f,  //
        0.5f, 0.25f, 0.0f;   // column 2 is all zero: max |W| -> 1e-5
    const channel_affine s = reparam::scale::smoothquant_affine(small, {&w}, 0.5);
    REQUIRE(s.scale[0] == 1e-5);  // 0 / 1 -> clamped
    REQUIRE(s.scale[1] == 1e-5);  // sqrt(1e-12) = 1e-6 -> clamped
    REQUIRE(s.scale[2] == Approx(1.0 / std::sqrt(1e-5)).epsilon(1e-12));
    const channel_affine z = reparam::scale::smoothquant_affine(small, {&w}, 0.0);
    REQUIRE(z.scale[0] == 1.0);  // 0^0 = 1 (torch.pow), / max |W| = 1
    REQUIRE(z.scale[2] == Approx(1e5).epsilon(1e-12));
  }
}

TEST_CASE("smoothquant_affine balances max |X'| and max |W'| and folds exactly",
          "[scale][reparameterize]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e103);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 64;
  const reparam::index channels = 24;
  matrix<double> x = ln_like_activations(rng, tokens, channels);
  x.col(5) *= 80.0;  // an outlier channel
  const matrix<float> q = random_weight(rng, 8, channels);
  const matrix<float> k = random_weight(rng, 6, channels);
  vector<float> act(channels);
  for (reparam::index c = 0; c < channels; ++c) {
    act[c] = static_cast<float>(x.col(c).cwiseAbs().maxCoeff());
  }
  const channel_affine a = reparam::scale::smoothquant_affine(act, {&q, &k}, 0.5);

  // After the fold both sides have max sqrt(max|X_j| max|W_j|) per channel.
  const auto folded_q = reparam::scale::fold_into_consumer(linear{q, {}}, a);
  const auto folded_k = reparam::scale::fold_into_consumer(linear{k, {}}, a);
  const matrix<double> x_folded = apply_affine(x, a);
  double worst = 0.0;
  for (reparam::index c = 0; c < channels; ++c) {
    const double x_max = x_folded.col(c).cwiseAbs().maxCoeff();
    const double w_max = std::max(folded_q.weight.col(c).cwiseAbs().maxCoeff(),
                                  folded_k.weight.col(c).cwiseAbs().maxCoeff());
    worst = std::max(worst, std::abs(x_max - static_cast<double>(w_max)) / x_max);
  }
  CAPTURE(worst);
  REQUIRE(worst < 1e-6);  // float absmax statistic and float W' (a few u)

  // The folded consumer on x' reproduces the original on x.
  const matrix<double> y = run_linear(x, q, vector<float>());
  const matrix<double> y_folded = run_linear(x_folded, folded_q.weight, folded_q.bias);
  const double change = (y_folded - y).cwiseAbs().maxCoeff() /
                        run_linear(x.cwiseAbs(), q.cwiseAbs(), vector<float>()).maxCoeff();
  CAPTURE(change);
  REQUIRE(change < 3.0 * float_unit_roundoff);
}

TEST_CASE("smoothquant_affine and omniquant_affine refuse bad statistics, alpha and weights",
          "[scale][reparameterize]") {
  vector<float> act = vector<float>::Ones(4);
  const matrix<float> w = matrix<float>::Ones(3, 4);
  const matrix<float> narrow = matrix<float>::Ones(3, 3);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto smooth = [&](const vector<float>& a, std::vector<const matrix<float>*> ws,
                          double alpha) {
    return reparam::scale::smoothquant_affine(a, ws, alpha);
  };
  REQUIRE_NOTHROW(smooth(act, {&w}, 0.5));
  vector<float> negative = act;
  negative[2] = -1.0f;
  REQUIRE_THROWS_WITH(smooth(negative, {&w}, 0.5),
                      Contains("scale::smoothquant_affine") && Contains("act_absmax[2] = -1"));
  vector<float> not_finite = act;
  not_finite[1] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(smooth(not_finite, {&w}, 0.5), Contains("act_absmax[1] = nan"));
  REQUIRE_THROWS_WITH(smooth(vector<float>(), {&w}, 0.5), Contains("act_absmax is empty"));
  for (const double alpha : {-0.1, 1.5, nan}) {
    REQUIRE_THROWS_WITH(smooth(act, {&w}, alpha), Contains("alpha") && Contains("[0, 1]"));
  }
  REQUIRE_THROWS_WITH(smooth(act, {}, 0.5), Contains("consumer_weights is empty"));
  REQUIRE_THROWS_WITH(smooth(act, {&w, nullptr}, 0.5), Contains("consumer_weights[1] is null"));
  REQUIRE_THROWS_WITH(smooth(act, {&w, &narrow}, 0.5),
                      Contains("consumer_weights[1] has 3 input columns, expected 4"));
  matrix<float> bad = w;
  bad(1, 2) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(smooth(act, {&bad}, 0.5), Contains("consumer_weights[0](1, 2) = inf"));

  vector<float> lo = vector<float>::Zero(4);
  vector<float> hi = vector<float>::Ones(4);
  REQUIRE_NOTHROW(reparam::scale::omniquant_affine(lo, hi, {&w}));
  lo[3] = 2.0f;
  REQUIRE_THROWS_WITH(reparam::scale::omniquant_affine(lo, hi, {&w}),
                      Contains("scale::omniquant_affine") && Contains("act_min[3] = 2 > act_max"));
  lo[3] = 0.0f;
  REQUIRE_THROWS_WITH(reparam::scale::omniquant_affine(vector<float>::Zero(3), hi, {&w}),
                      Contains("act_min has 3 entries, act_max has 4"));
  hi[0] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(reparam::scale::omniquant_affine(lo, hi, {&w}), Contains("finite"));
  hi[0] = 1.0f;
  REQUIRE_THROWS_WITH(reparam::scale::omniquant_affine(lo, hi, {&narrow}),
                      Contains("has 3 input columns"));
  REQUIRE_THROWS_WITH(reparam::scale::omniquant_affine(lo, hi, {&w}, 2.0), Contains("alpha 2"));
}

TEST_CASE(
    "omniquant_affine centres each channel and scales its half range, and the fold stays exact",
    "[scale][reparameterize]") {
  vector<float> lo(3);
  lo << -1.0f, 2.0f, -6.0f;
  vector<float> hi(3);
  hi << 3.0f, 4.0f, -2.0f;
  matrix<float> w(2, 3);
  w << 2.0f, -4.0f, 0.25f,  //
      -1.0f, 1.0f, -0.5f;   // max |W_j| = {2, 4, 0.5}
  const channel_affine a = reparam::scale::omniquant_affine(lo, hi, {&w}, 0.5);
  REQUIRE(a.shift[0] == 1.0);  // (max + min) / 2
  REQUIRE(a.shift[1] == 3.0);
  REQUIRE(a.shift[2] == -4.0);
  // half range {2, 1, 2}: r = sqrt(h / w) = {1, 0.5, 2}.
  REQUIRE(a.scale[0] == Approx(1.0).epsilon(1e-14));
  REQUIRE(a.scale[1] == Approx(0.5).epsilon(1e-14));
  REQUIRE(a.scale[2] == Approx(2.0).epsilon(1e-14));
  // A constant channel (min == max) has half range 0, clamped to 1e-5 before the power.
  vector<float> flat = hi;
  const channel_affine c = reparam::scale::omniquant_affine(flat, hi, {&w}, 1.0);
  REQUIRE(c.scale[0] == 1e-5);

  SECTION("on data: x' is symmetric per channel and LayerNorm -> q, k folds exactly") {
    const std::uint64_t seed = reparam::test::test_seed(0x5ca1e104);
    CAPTURE(seed);
    rng_stream rng(seed);
    const reparam::index tokens = 48;
    const reparam::index channels = 16;
    const matrix<double> x = ln_like_activations(rng, tokens, channels);
    const matrix<float> q = random_weight(rng, 6, channels);
    const matrix<float> k = random_weight(rng, 5, channels);
    vector<float> x_min(channels);
    vector<float> x_max(channels);
    for (reparam::index ch = 0; ch < channels; ++ch) {
      x_min[ch] = static_cast<float>(x.col(ch).minCoeff());
      x_max[ch] = static_cast<float>(x.col(ch).maxCoeff());
    }
    const channel_affine let = reparam::scale::omniquant_affine(x_min, x_max, {&q, &k});
    // Use the float statistics as the data's range: x' = (x - t) / r has max = -min.
    const matrix<double> x_folded = apply_affine(x, let);
    double asym = 0.0;
    for (reparam::index ch = 0; ch < channels; ++ch) {
      const double top = x_folded.col(ch).maxCoeff();
      const double bottom = x_folded.col(ch).minCoeff();
      asym = std::max(asym, std::abs(top + bottom) / (top - bottom));
    }
    CAPTURE(asym);
    REQUIRE(asym < 1e-6);  // float min/max statistics: a few u

    // The norm -> consumers fold with this shift (the norm has no bias: it is created).
    norm_affine norm;
    norm.gain = vector<float>::Ones(channels);
    const auto folded =
        reparam::scale::fold_channel_affine(norm, {linear{q, {}}, linear{k, {}}}, let);
    REQUIRE(folded.norm.bias.size() == channels);
    // Treat x as the normalized input n (gain 1): the folded norm gives n / r + bias'.
    matrix<double> x_norm(tokens, channels);
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index ch = 0; ch < channels; ++ch) {
        x_norm(t, ch) = x(t, ch) * static_cast<double>(folded.norm.gain[ch]) +
                        static_cast<double>(folded.norm.bias[ch]);
      }
    }
    const matrix<double> y = run_linear(x, q, vector<float>());
    const matrix<double> y_folded =
        run_linear(x_norm, folded.consumers[0].weight, folded.consumers[0].bias);
    // Bound: |W| (|x| + 2|t|); 3u as in fold_test.cpp.
    matrix<double> x_abs = x.cwiseAbs();
    for (reparam::index ch = 0; ch < channels; ++ch) {
      x_abs.col(ch).array() += 2.0 * std::abs(let.shift[ch]);
    }
    const matrix<double> bound = run_linear(x_abs, q.cwiseAbs(), vector<float>());
    const double worst = worst_roundoff_ratio(y_folded, y, bound);
    CAPTURE(worst);
    REQUIRE(worst <= 3.0);
  }
}

// ---------------------------------------------------------------------------------------------
// AWQ

TEST_CASE("awq_search finds the grid argmin of a synthetic loss and normalizes r",
          "[scale][reparameterize]") {
  // Two channels with mean |x| = {e^-1, e}: r = {e^-a, e^a} / sqrt(1) so log(r_1) = a.
  vector<float> act(2);
  act << static_cast<float>(std::exp(-1.0)), static_cast<float>(std::exp(1.0));
  const double target = 0.35;  // on the grid: 7 / 20
  std::vector<double> seen_ratios;
  const auto loss = [&](const channel_affine& a) {
    const double ratio = std::log(a.scale[1]);
    seen_ratios.push_back(ratio);
    REQUIRE_FALSE(a.has_shift());
    return (ratio - target) * (ratio - target);
  };
  const auto result = reparam::scale::awq_search(act, loss, 20);
  REQUIRE(result.ratio == Approx(0.35).margin(1e-12));
  REQUIRE(result.losses.size() == 20);
  REQUIRE(seen_ratios.size() == 20);
  for (std::size_t k = 0; k < 20; ++k) {
    const double ratio = static_cast<double>(k) / 20.0;
    CAPTURE(k);
    // float(e^+-1) is not exactly e^+-1: a few 1e-8 in the recovered ratio.
    REQUIRE(seen_ratios[k] == Approx(ratio).margin(1e-7));
    REQUIRE(result.losses[k] == Approx((ratio - target) * (ratio - target)).margin(1e-7));
  }
  REQUIRE(result.loss == *std::min_element(result.losses.begin(), result.losses.end()));
  REQUIRE(result.affine.scale[1] == Approx(std::exp(0.35)).epsilon(1e-7));

  SECTION("ties keep the first ratio") {
    const auto flat = reparam::scale::awq_search(act, [](const channel_affine&) { return 1.0; });
    REQUIRE(flat.ratio == 0.0);
    REQUIRE(flat.affine.scale == vector<double>::Ones(2));
  }
  SECTION("sqrt(max r min r) == 1, the 1e-4 clamp, and 0^0 = 1 at ratio 0") {
    vector<float> spread(4);
    spread << 0.0f, 1.0f, 4.0f, 0.01f;
    std::vector<channel_affine> candidates;
    const auto record = [&](const channel_affine& a) {
      candidates.push_back(a);
      return 0.0;
    };
    (void)reparam::scale::awq_search(spread, record, 4);
    REQUIRE(candidates.size() == 4);
    for (const channel_affine& a : candidates) {
      REQUIRE(std::sqrt(a.scale.maxCoeff() * a.scale.minCoeff()) == Approx(1.0).epsilon(1e-14));
    }
    REQUIRE(candidates[0].scale == vector<double>::Ones(4));
    // ratio 0.5: pre-normalization {1e-4, 1, 2, 0.1}, normalized by sqrt(2e-4).
    const double norm = std::sqrt(2.0 * 1e-4);
    REQUIRE(candidates[2].scale[0] == Approx(1e-4 / norm).epsilon(1e-12));
    REQUIRE(candidates[2].scale[2] == Approx(2.0 / norm).epsilon(1e-12));
    REQUIRE(candidates[2].scale[3] ==
            Approx(std::sqrt(static_cast<double>(0.01f)) / norm).epsilon(1e-7));
  }
  SECTION("bad input") {
    const auto zero = [](const channel_affine&) { return 0.0; };
    REQUIRE_THROWS_WITH(reparam::scale::awq_search(act, zero, 0),
                        Contains("scale::awq_search") && Contains("grid 0"));
    REQUIRE_THROWS_WITH(reparam::scale::awq_search(act, nullptr), Contains("loss is an empty"));
    vector<float> negative = act;
    negative[0] = -1.0f;
    REQUIRE_THROWS_WITH(reparam::scale::awq_search(negative, zero),
                        Contains("act_mean_abs[0] = -1"));
    REQUIRE_THROWS_WITH(reparam::scale::awq_search(vector<float>(), zero),
                        Contains("act_mean_abs is empty"));
    const auto nan_at_third = [](const channel_affine& a) {
      return std::log(a.scale[1]) > 0.15 ? std::numeric_limits<double>::quiet_NaN() : 1.0;
    };
    REQUIRE_THROWS_WITH(reparam::scale::awq_search(act, nan_at_third, 10),
                        Contains("loss returned nan for ratio 0.2"));
  }
}

TEST_CASE("awq_consumer_loss equals a direct simulation of the folded, quantized consumers",
          "[scale][reparameterize]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e105);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 20;
  const reparam::index channels = 12;
  const bool has_shift = GENERATE(false, true);
  CAPTURE(has_shift);
  const matrix<double> xd = ln_like_activations(rng, tokens, channels);
  const matrix<float> x = xd.cast<float>();
  const matrix<float> w1 = random_weight(rng, 5, channels);
  const matrix<float> w2 = random_weight(rng, 7, channels);
  channel_affine a;
  a.scale.resize(channels);
  for (reparam::index c = 0; c < channels; ++c) {
    a.scale[c] = rng.log_uniform(-1.0, 1.0);
  }
  if (has_shift) {
    a.shift.resize(channels);
    for (reparam::index c = 0; c < channels; ++c) {
      a.shift[c] = rng.uniform(-1.0, 1.0);
    }
  }
  // Any deterministic weight fake-quantizer: round to multiples of 1/8, half even.
  const auto quantize = [](const matrix<float>& w) {
    matrix<float> out(w.rows(), w.cols());
    for (reparam::index i = 0; i < w.size(); ++i) {
      out.data()[i] = static_cast<float>(round_even(static_cast<double>(w.data()[i]) * 8.0) / 8.0);
    }
    return out;
  };
  const double loss = reparam::scale::awq_consumer_loss(x, {&w1, &w2}, a, quantize);

  // The folded block: x' = (x - t) / r; y' = Q(float(W diag r)) x' + W t; compare with W x.
  const matrix<double> x_in = x.cast<double>();
  const matrix<double> x_folded = apply_affine(x_in, a);
  double expected = 0.0;
  for (const matrix<float>* w : {&w1, &w2}) {
    matrix<float> scaled(w->rows(), channels);
    for (reparam::index i = 0; i < w->rows(); ++i) {
      for (reparam::index c = 0; c < channels; ++c) {
        scaled(i, c) = static_cast<float>(static_cast<double>((*w)(i, c)) * a.scale[c]);
      }
    }
    const matrix<float> wq = quantize(scaled);
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index i = 0; i < w->rows(); ++i) {
        double folded = 0.0;
        double original = 0.0;
        for (reparam::index c = 0; c < channels; ++c) {
          const double shift = has_shift ? a.shift[c] : 0.0;
          folded += static_cast<double>(wq(i, c)) * x_folded(t, c) +
                    static_cast<double>((*w)(i, c)) * shift;
          original += static_cast<double>((*w)(i, c)) * x_in(t, c);
        }
        expected += (folded - original) * (folded - original);
      }
    }
  }
  REQUIRE(expected > 0.0);
  // Both are double sums of the same squared errors computed in different orders.
  REQUIRE(loss == Approx(expected).epsilon(1e-9));

  SECTION("bad input") {
    const auto wrong_shape = [](const matrix<float>& w) {
      return matrix<float>(matrix<float>::Zero(w.rows(), w.cols() + 1));
    };
    REQUIRE_THROWS_WITH(
        reparam::scale::awq_consumer_loss(x, {&w1}, a, wrong_shape),
        Contains("scale::awq_consumer_loss") && Contains("quantize_weight returned 5 x 13"));
    REQUIRE_THROWS_WITH(reparam::scale::awq_consumer_loss(x, {&w1}, a, nullptr),
                        Contains("quantize_weight is an empty"));
    REQUIRE_THROWS_WITH(reparam::scale::awq_consumer_loss(x, {}, a, quantize),
                        Contains("weights is empty"));
    channel_affine bad = a;
    bad.scale[4] = -1.0;
    REQUIRE_THROWS_WITH(reparam::scale::awq_consumer_loss(x, {&w1}, bad, quantize),
                        Contains("affine.scale[4] = -1"));
    matrix<float> x_nan = x;
    x_nan(3, 2) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(reparam::scale::awq_consumer_loss(x_nan, {&w1}, a, quantize),
                        Contains("x(3, 2) = nan"));
  }
}

TEST_CASE(
    "awq_search with awq_consumer_loss reduces the 3-bit output error of an outlier "
    "channel problem",
    "[scale][reparameterize]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e106);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 128;
  const reparam::index channels = 32;
  const reparam::index out = 16;
  matrix<double> xd(tokens, channels);
  for (reparam::index t = 0; t < tokens; ++t) {
    for (reparam::index c = 0; c < channels; ++c) {
      xd(t, c) = rng.uniform(-1.0, 1.0);
    }
  }
  xd.col(7) *= 40.0;  // the salient (outlier) input channel
  xd.col(19) *= 15.0;
  const matrix<float> x = xd.cast<float>();
  const matrix<float> w = random_weight(rng, out, channels);
  vector<float> mean_abs(channels);
  for (reparam::index c = 0; c < channels; ++c) {
    mean_abs[c] = static_cast<float>(x.col(c).cast<double>().cwiseAbs().mean());
  }
  const auto quantize = [](const matrix<float>& m) { return fake_quantize_rows(m, 3); };
  const auto result = reparam::scale::awq_search(
      mean_abs,
      [&](const channel_affine& a) {
        return reparam::scale::awq_consumer_loss(x, {&w}, a, quantize);
      },
      20);

  // Independently: the output error of W x against Q(W') x' with x' = x / r.
  const auto output_error = [&](const channel_affine& a) {
    const linear folded = reparam::scale::fold_into_consumer(linear{w, {}}, a);
    const matrix<float> wq = fake_quantize_rows(folded.weight, 3);
    const matrix<double> x_in = x.cast<double>();
    const matrix<double> y = run_linear(x_in, w, vector<float>());
    const matrix<double> y_q = run_linear(apply_affine(x_in, a), wq, folded.bias);
    return (y_q - y).squaredNorm();
  };
  channel_affine identity;
  identity.scale = vector<double>::Ones(channels);
  const double plain = output_error(identity);
  const double awq = output_error(result.affine);
  CAPTURE(result.ratio, plain, awq);
  REQUIRE(result.losses[0] == Approx(plain).epsilon(1e-9));  // ratio 0 is r = 1
  REQUIRE(result.loss == Approx(awq).epsilon(1e-9));
  REQUIRE(result.ratio > 0.0);
  REQUIRE(awq < 0.8 * plain);
}
