// SPDX-License-Identifier: Apache-2.0
// The exact channel-affine folds of scale/fold.hpp against the unfolded networks, run in double
// by the small oracles below (LayerNorm / RMSNorm, linear, row-stochastic attention mixing with
// grouped-query heads, SwiGLU): q, k, v behind one LayerNorm, w1, w3 behind an RMSNorm, v -> o
// through attention and up -> down through the SwiGLU gate. Also hand-computed values, the bias
// creation rule, the partial-fold hazard, and every refusal with its message.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>

#include "support/random.hpp"
#include "support/scale_oracles.hpp"

namespace {

using Catch::Matchers::Contains;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): test file

// Tolerance of a folded network against its unfolded oracle, per output, as a multiple of
// float_unit_roundoff times the output's magnitude bound M_i (the same network evaluated on
// absolute values, shifts counted twice; see each test). Derivation: an output is
// sum_j W'_ij x'_j + c'_i; W' and the producer's parameters (gain', bias' or W1', b1') each carry
// one float rounding, so every product term is off by at most 2u relative to its exact value, and
// c' (one rounding of a double sum) by u |c'|; the double evaluation adds ~1e-16 M. Total
// <= 2u M, so 3u M leaves 50% headroom and still fails on any real error (a wrong r or t moves
// outputs by O(M)).
constexpr double fold_tolerance_factor = 3.0;

/// r = 10^U(-2, 2) per channel, t = U(-2, 2) (or no shift).
channel_affine random_affine(rng_stream& rng, reparam::index channels, bool has_shift) {
  channel_affine a;
  a.scale.resize(channels);
  for (reparam::index c = 0; c < channels; ++c) {
    a.scale[c] = rng.log_uniform(-2.0, 2.0);
  }
  if (has_shift) {
    a.shift.resize(channels);
    for (reparam::index c = 0; c < channels; ++c) {
      a.shift[c] = rng.uniform(-2.0, 2.0);
    }
  }
  return a;
}

/// Input tokens [tokens, channels] whose channels have different offsets and ranges.
matrix<double> random_tokens(rng_stream& rng, reparam::index tokens, reparam::index channels) {
  matrix<double> z(tokens, channels);
  for (reparam::index c = 0; c < channels; ++c) {
    const double offset = rng.uniform(-3.0, 3.0);
    const double spread = rng.log_uniform(-1.0, 1.0);
    for (reparam::index t = 0; t < tokens; ++t) {
      z(t, c) = offset + spread * rng.uniform(-1.0, 1.0);
    }
  }
  return z;
}

// --- The double oracle network pieces (written from the layer definitions) ---

/// LayerNorm without affine: (z - mean) / sqrt(var + eps) per token (biased variance).
matrix<double> layer_norm(const matrix<double>& z, double eps = 1e-5) {
  matrix<double> n(z.rows(), z.cols());
  const auto cols = static_cast<double>(z.cols());
  for (reparam::index t = 0; t < z.rows(); ++t) {
    double mean = 0.0;
    for (reparam::index c = 0; c < z.cols(); ++c) {
      mean += z(t, c);
    }
    mean /= cols;
    double var = 0.0;
    for (reparam::index c = 0; c < z.cols(); ++c) {
      var += (z(t, c) - mean) * (z(t, c) - mean);
    }
    var /= cols;
    for (reparam::index c = 0; c < z.cols(); ++c) {
      n(t, c) = (z(t, c) - mean) / std::sqrt(var + eps);
    }
  }
  return n;
}

/// RMSNorm without gain: z / sqrt(mean(z^2) + eps) per token.
matrix<double> rms_norm(const matrix<double>& z, double eps = 1e-6) {
  matrix<double> n(z.rows(), z.cols());
  for (reparam::index t = 0; t < z.rows(); ++t) {
    double ms = 0.0;
    for (reparam::index c = 0; c < z.cols(); ++c) {
      ms += z(t, c) * z(t, c);
    }
    ms /= static_cast<double>(z.cols());
    for (reparam::index c = 0; c < z.cols(); ++c) {
      n(t, c) = z(t, c) / std::sqrt(ms + eps);
    }
  }
  return n;
}

/// n * gain + bias per channel.
matrix<double> apply_affine(const matrix<double>& n, const norm_affine& norm) {
  matrix<double> x(n.rows(), n.cols());
  for (reparam::index t = 0; t < n.rows(); ++t) {
    for (reparam::index c = 0; c < n.cols(); ++c) {
      const double bias = norm.bias.size() != 0 ? static_cast<double>(norm.bias[c]) : 0.0;
      x(t, c) = n(t, c) * static_cast<double>(norm.gain[c]) + bias;
    }
  }
  return x;
}

/// The magnitude twin of run_linear: |W| |x| + |b|.
matrix<double> run_linear_abs(const matrix<double>& x_abs, const linear& l) {
  linear a;
  a.weight = l.weight.cwiseAbs();
  a.bias = l.bias.cwiseAbs();
  return run_linear(x_abs, a);
}

/// A norm's output x = n * gain + bias, the folded norm's output x_folded, and the magnitude
/// |n| |gain| + |bias| of x (without the shift; the callers with one add 2 |t|).
struct norm_outputs {
  matrix<double> x;
  matrix<double> x_folded;
  matrix<double> x_abs;
};

norm_outputs run_norm(const matrix<double>& n, const norm_affine& norm, const norm_affine& folded) {
  norm_affine abs_norm;
  abs_norm.gain = norm.gain.cwiseAbs();
  abs_norm.bias = norm.bias.cwiseAbs();
  return {apply_affine(n, norm), apply_affine(n, folded), apply_affine(n.cwiseAbs(), abs_norm)};
}

/// |t| broadcast over tokens (zero when there is no shift).
matrix<double> shift_rows(const channel_affine& a, reparam::index tokens, reparam::index channels) {
  matrix<double> s = matrix<double>::Zero(tokens, channels);
  if (a.has_shift()) {
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index c = 0; c < channels; ++c) {
        s(t, c) = std::abs(a.shift[c]);
      }
    }
  }
  return s;
}

/// Max over entries of |a - b| - factor * u * bound (<= 0 when every entry is within tolerance),
/// and the largest ratio |a - b| / (u * bound) for the failure message.
struct fold_check {
  double worst_excess = -1.0;
  double worst_ulps = 0.0;
};

fold_check compare_outputs(const matrix<double>& folded, const matrix<double>& oracle,
                           const matrix<double>& bound) {
  fold_check out;
  out.worst_excess = -std::numeric_limits<double>::infinity();
  for (reparam::index i = 0; i < oracle.size(); ++i) {
    const double diff = std::abs(folded.data()[i] - oracle.data()[i]);
    const double unit = float_unit_roundoff * bound.data()[i];
    out.worst_excess = std::max(out.worst_excess, diff - fold_tolerance_factor * unit);
    out.worst_ulps = std::max(out.worst_ulps, unit > 0.0 ? diff / unit : diff);
  }
  return out;
}

/// The largest |a - b| / max|b| over the whole output (how much a wrong fold moves it).
double relative_change(const matrix<double>& a, const matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

/// The consumer's view of a row-stochastic attention: out_h = P_h V[:, kv(h) block] for each
/// query head h (GQA: kv(h) = h / (q_heads / kv_heads)); heads concatenated along columns.
matrix<double> attention_mix(const std::vector<matrix<double>>& probs, const matrix<double>& v,
                             reparam::index q_heads, reparam::index kv_heads,
                             reparam::index head_dim) {
  const reparam::index tokens = v.rows();
  const reparam::index group = q_heads / kv_heads;
  matrix<double> out(tokens, q_heads * head_dim);
  for (reparam::index h = 0; h < q_heads; ++h) {
    const reparam::index kv = h / group;
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index d = 0; d < head_dim; ++d) {
        double acc = 0.0;
        for (reparam::index s = 0; s < tokens; ++s) {
          acc += probs[static_cast<std::size_t>(h)](t, s) * v(s, kv * head_dim + d);
        }
        out(t, h * head_dim + d) = acc;
      }
    }
  }
  return out;
}

/// Softmax of random logits per row: a row-stochastic matrix with positive entries.
matrix<double> random_stochastic(rng_stream& rng, reparam::index tokens) {
  matrix<double> p(tokens, tokens);
  for (reparam::index t = 0; t < tokens; ++t) {
    double sum = 0.0;
    for (reparam::index s = 0; s < tokens; ++s) {
      p(t, s) = std::exp(rng.uniform(-3.0, 3.0));
      sum += p(t, s);
    }
    p.row(t) /= sum;
  }
  return p;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("fold_into_norm and fold_into_consumer match hand-computed values", "[scale][fold]") {
  norm_affine norm;
  norm.gain = vector<float>(2);
  norm.gain << 2.0f, -1.0f;
  norm.bias = vector<float>(2);
  norm.bias << 1.0f, 0.5f;
  channel_affine a;
  a.scale = vector<double>(2);
  a.scale << 2.0, 0.5;
  a.shift = vector<double>(2);
  a.shift << 1.0, -1.0;

  // gain' = gain / r, bias' = (bias - t) / r.
  const norm_affine n = reparam::scale::fold_into_norm(norm, a);
  REQUIRE(n.gain[0] == 1.0f);
  REQUIRE(n.gain[1] == -2.0f);
  REQUIRE(n.bias.size() == 2);
  REQUIRE(n.bias[0] == 0.0f);
  REQUIRE(n.bias[1] == 3.0f);

  // W' = W diag(r), c' = c + W t = {0.5 + 1 - 2, -1 + 3 + 1}.
  linear l;
  l.weight = matrix<float>(2, 2);
  l.weight << 1.0f, 2.0f, 3.0f, -1.0f;
  l.bias = vector<float>(2);
  l.bias << 0.5f, -1.0f;
  const linear c = reparam::scale::fold_into_consumer(l, a);
  REQUIRE(c.weight(0, 0) == 2.0f);
  REQUIRE(c.weight(0, 1) == 1.0f);
  REQUIRE(c.weight(1, 0) == 6.0f);
  REQUIRE(c.weight(1, 1) == -0.5f);
  REQUIRE(c.bias.size() == 2);
  REQUIRE(c.bias[0] == -0.5f);
  REQUIRE(c.bias[1] == 3.0f);

  SECTION("a shift creates the missing biases (norm: -t / r, consumer: W t)") {
    norm_affine bare = norm;
    bare.bias.resize(0);
    const norm_affine nb = reparam::scale::fold_into_norm(bare, a);
    REQUIRE(nb.bias.size() == 2);
    REQUIRE(nb.bias[0] == -0.5f);
    REQUIRE(nb.bias[1] == 2.0f);
    linear no_bias = l;
    no_bias.bias.resize(0);
    const linear cb = reparam::scale::fold_into_consumer(no_bias, a);
    REQUIRE(cb.bias.size() == 2);
    REQUIRE(cb.bias[0] == -1.0f);
    REQUIRE(cb.bias[1] == 4.0f);
  }

  SECTION("no shift, or an all-zero shift, creates no bias and keeps an existing one exact") {
    norm_affine bare = norm;
    bare.bias.resize(0);
    linear no_bias = l;
    no_bias.bias.resize(0);
    channel_affine scale_only = a;
    scale_only.shift.resize(0);
    channel_affine zero_shift = a;
    zero_shift.shift.setZero();
    for (const channel_affine& s : {scale_only, zero_shift}) {
      REQUIRE(reparam::scale::fold_into_norm(bare, s).bias.size() == 0);
      REQUIRE(reparam::scale::fold_into_consumer(no_bias, s).bias.size() == 0);
      const linear kept = reparam::scale::fold_into_consumer(l, s);
      REQUIRE(kept.bias == l.bias);
      const norm_affine nk = reparam::scale::fold_into_norm(norm, s);
      REQUIRE(nk.bias[0] == 0.5f);  // bias / r
      REQUIRE(nk.bias[1] == 1.0f);
    }
  }
}

TEST_CASE("fold_channel_affine leaves a LayerNorm -> q, k, v block unchanged", "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e001);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 13;
  const reparam::index channels = 24;
  const bool has_norm_bias = GENERATE(true, false);
  const bool has_shift = GENERATE(true, false);
  CAPTURE(has_norm_bias, has_shift);

  const matrix<double> z = random_tokens(rng, tokens, channels);
  norm_affine norm;
  norm.gain = random_vector(rng, channels, -2.0, 2.0);
  if (has_norm_bias) {
    norm.bias = random_vector(rng, channels, -1.0, 1.0);
  }
  // q with a bias, k without (a shift must create it), v with a bias and another width.
  const std::vector<linear> consumers = {random_linear(rng, 8, channels, true),
                                         random_linear(rng, 8, channels, false),
                                         random_linear(rng, 12, channels, true)};
  const channel_affine affine = random_affine(rng, channels, has_shift);

  const norm_affine norm_copy = norm;
  const std::vector<linear> consumers_copy = consumers;
  const reparam::scale::folded_norm_block folded =
      reparam::scale::fold_channel_affine(norm, consumers, affine);
  REQUIRE(same(norm, norm_copy));  // inputs untouched
  for (std::size_t i = 0; i < consumers.size(); ++i) {
    REQUIRE(same(consumers[i], consumers_copy[i]));
  }
  REQUIRE(folded.consumers.size() == 3);
  REQUIRE((folded.norm.bias.size() != 0) == (has_norm_bias || has_shift));
  REQUIRE((folded.consumers[1].bias.size() != 0) == has_shift);

  const auto [x, x_folded, x_norm_abs] = run_norm(layer_norm(z), norm, folded.norm);
  // Magnitude of an input channel: |n g| + |b| + 2 |t| (the shift enters bias' and c').
  const matrix<double> x_abs = x_norm_abs + 2.0 * shift_rows(affine, tokens, channels);
  for (std::size_t i = 0; i < consumers.size(); ++i) {
    CAPTURE(i);
    const matrix<double> y = run_linear(x, consumers[i]);
    const matrix<double> y_folded = run_linear(x_folded, folded.consumers[i]);
    const fold_check check = compare_outputs(y_folded, y, run_linear_abs(x_abs, consumers[i]));
    CAPTURE(check.worst_ulps);
    REQUIRE(check.worst_excess <= 0.0);
  }

  SECTION("the quantized tensor really is (x - t) / r") {
    matrix<double> expected = x;
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index c = 0; c < channels; ++c) {
        const double shift = has_shift ? affine.shift[c] : 0.0;
        expected(t, c) = (x(t, c) - shift) / affine.scale[c];
      }
    }
    // gain' and bias' carry one float rounding each: 2u relative to |n g| / r + |b - t| / r.
    double worst = 0.0;
    for (reparam::index t = 0; t < tokens; ++t) {
      for (reparam::index c = 0; c < channels; ++c) {
        const double bound = x_abs(t, c) / affine.scale[c];
        worst = std::max(worst,
                         std::abs(x_folded(t, c) - expected(t, c)) / (float_unit_roundoff * bound));
      }
    }
    CAPTURE(worst);
    REQUIRE(worst <= fold_tolerance_factor);
  }
}

TEST_CASE("a fold that misses one consumer changes that consumer's output", "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e002);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index channels = 16;
  const matrix<double> z = random_tokens(rng, 9, channels);
  norm_affine norm;
  norm.gain = random_vector(rng, channels, 0.5, 2.0);
  norm.bias = random_vector(rng, channels, -1.0, 1.0);
  const linear q = random_linear(rng, 6, channels, true);
  const linear k = random_linear(rng, 6, channels, true);
  const linear v = random_linear(rng, 6, channels, true);
  const channel_affine affine = random_affine(rng, channels, true);

  // v is forgotten: it still reads the folded norm with its original weights.
  const auto folded = reparam::scale::fold_channel_affine(norm, {q, k}, affine);
  const matrix<double> n = layer_norm(z);
  const matrix<double> x = apply_affine(n, norm);
  const matrix<double> x_folded = apply_affine(n, folded.norm);
  const double q_change =
      relative_change(run_linear(x_folded, folded.consumers[0]), run_linear(x, q));
  const double v_change = relative_change(run_linear(x_folded, v), run_linear(x, v));
  CAPTURE(q_change, v_change);
  REQUIRE(q_change < 1e-5);
  REQUIRE(v_change > 0.1);
}

TEST_CASE("fold_channel_affine leaves an RMSNorm -> w1, w3 SwiGLU input unchanged",
          "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e003);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 11;
  const reparam::index channels = 20;
  const reparam::index hidden = 14;
  const bool has_shift = GENERATE(false, true);
  CAPTURE(has_shift);
  const matrix<double> z = random_tokens(rng, tokens, channels);
  norm_affine norm;  // RMSNorm: gain only
  norm.gain = random_vector(rng, channels, 0.2, 3.0);
  const linear w1 = random_linear(rng, hidden, channels, false);
  const linear w3 = random_linear(rng, hidden, channels, false);
  const channel_affine affine = random_affine(rng, channels, has_shift);

  const auto folded = reparam::scale::fold_channel_affine(norm, {w1, w3}, affine);
  // A shift turns the RMSNorm into RMSNorm + bias and gives w1, w3 biases.
  REQUIRE((folded.norm.bias.size() != 0) == has_shift);
  REQUIRE((folded.consumers[0].bias.size() != 0) == has_shift);

  const auto [x, x_folded, x_norm_abs] = run_norm(rms_norm(z), norm, folded.norm);
  const matrix<double> x_abs = x_norm_abs + 2.0 * shift_rows(affine, tokens, channels);
  const matrix<double> gate = run_linear(x, w1);
  const matrix<double> up = run_linear(x, w3);
  const matrix<double> gate_folded = run_linear(x_folded, folded.consumers[0]);
  const matrix<double> up_folded = run_linear(x_folded, folded.consumers[1]);
  const fold_check g = compare_outputs(gate_folded, gate, run_linear_abs(x_abs, w1));
  const fold_check u = compare_outputs(up_folded, up, run_linear_abs(x_abs, w3));
  CAPTURE(g.worst_ulps, u.worst_ulps);
  REQUIRE(g.worst_excess <= 0.0);
  REQUIRE(u.worst_excess <= 0.0);
}

TEST_CASE("fold_linear_pair through row-stochastic attention, with and without GQA",
          "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e004);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 7;
  const reparam::index model = 10;
  const reparam::index head_dim = 3;
  const reparam::index q_heads = 4;
  const reparam::index kv_heads =
      GENERATE(as<reparam::index>{}, 4, 2, 1);  // MHA, GQA (2 q heads per KV), MQA
  const bool has_bias = GENERATE(true, false);
  CAPTURE(kv_heads, has_bias);

  const matrix<double> x = random_tokens(rng, tokens, model);
  const linear v_proj = random_linear(rng, kv_heads * head_dim, model, has_bias);
  const linear o_proj = random_linear(rng, model, q_heads * head_dim, has_bias);
  std::vector<matrix<double>> probs;
  for (reparam::index h = 0; h < q_heads; ++h) {
    probs.push_back(random_stochastic(rng, tokens));
  }
  const channel_affine affine = random_affine(rng, kv_heads * head_dim, true);

  std::vector<reparam::index> source;
  if (kv_heads != q_heads) {
    // Column j = h * head_dim + d of o_proj reads row kv(h) * head_dim + d of v_proj.
    for (reparam::index h = 0; h < q_heads; ++h) {
      for (reparam::index d = 0; d < head_dim; ++d) {
        source.push_back((h / (q_heads / kv_heads)) * head_dim + d);
      }
    }
  }
  const auto folded = reparam::scale::fold_linear_pair(v_proj, o_proj, affine, source);
  REQUIRE(folded.producer.bias.size() == kv_heads * head_dim);  // a shift creates b1
  REQUIRE(folded.consumer.bias.size() == model);                // and b2

  const auto run = [&](const linear& producer, const linear& consumer) {
    return run_linear(attention_mix(probs, run_linear(x, producer), q_heads, kv_heads, head_dim),
                      consumer);
  };
  const matrix<double> y = run(v_proj, o_proj);
  const matrix<double> y_folded = run(folded.producer, folded.consumer);
  // Magnitude: |W2| P (|W1| |x| + |b1| + 2|t|) + |b2|; P >= 0 keeps it a bound.
  matrix<double> v_abs =
      run_linear_abs(x.cwiseAbs(), v_proj) + 2.0 * shift_rows(affine, tokens, kv_heads * head_dim);
  const matrix<double> bound =
      run_linear_abs(attention_mix(probs, v_abs, q_heads, kv_heads, head_dim), o_proj);
  const fold_check check = compare_outputs(y_folded, y, bound);
  CAPTURE(check.worst_ulps);
  REQUIRE(check.worst_excess <= 0.0);

  SECTION("a shift through a mixing whose rows do not sum to 1 is not exact") {
    // Why the row-stochastic precondition matters: scale P by 0.5 and the output moves.
    std::vector<matrix<double>> half = probs;
    for (auto& p : half) {
      p *= 0.5;
    }
    const matrix<double> yh =
        run_linear(attention_mix(half, run_linear(x, v_proj), q_heads, kv_heads, head_dim), o_proj);
    const matrix<double> yh_folded =
        run_linear(attention_mix(half, run_linear(x, folded.producer), q_heads, kv_heads, head_dim),
                   folded.consumer);
    REQUIRE(relative_change(yh_folded, yh) > 1e-3);
  }
}

TEST_CASE("fold_linear_pair through a SwiGLU gate is exact without a shift and refuses one",
          "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e005);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 9;
  const reparam::index model = 12;
  const reparam::index hidden = 18;
  const matrix<double> x = random_tokens(rng, tokens, model);
  const linear gate = random_linear(rng, hidden, model, false);
  const linear up = random_linear(rng, hidden, model, true);
  const linear down = random_linear(rng, model, hidden, true);
  const channel_affine affine = random_affine(rng, hidden, false);

  const auto run = [&](const linear& u, const linear& d) {
    const matrix<double> g = run_linear(x, gate);
    matrix<double> h = run_linear(x, u);
    for (reparam::index i = 0; i < h.size(); ++i) {
      h.data()[i] *= silu(g.data()[i]);
    }
    return run_linear(h, d);
  };
  const auto folded = reparam::scale::fold_linear_pair(up, down, affine, {}, true);
  const matrix<double> y = run(up, down);
  const matrix<double> y_folded = run(folded.producer, folded.consumer);
  matrix<double> h_abs = run_linear_abs(x.cwiseAbs(), up);
  const matrix<double> g = run_linear(x, gate);
  for (reparam::index i = 0; i < h_abs.size(); ++i) {
    h_abs.data()[i] *= std::abs(silu(g.data()[i]));
  }
  const fold_check check = compare_outputs(y_folded, y, run_linear_abs(h_abs, down));
  CAPTURE(check.worst_ulps);
  REQUIRE(check.worst_excess <= 0.0);

  // With a shift the gate multiplies silu(g) t / r into h: not a per-channel affine of h.
  const channel_affine shifted = random_affine(rng, hidden, true);
  const auto wrong = reparam::scale::fold_linear_pair(up, down, shifted);  // flag not set
  REQUIRE(relative_change(run(wrong.producer, wrong.consumer), y) > 1e-3);
  REQUIRE_THROWS_WITH(reparam::scale::fold_linear_pair(up, down, shifted, {}, true),
                      Contains("scale::fold_linear_pair") && Contains("affine.shift[0]") &&
                          Contains("multiplicative gate"));
  // An all-zero shift is no shift: accepted.
  channel_affine zero_shift = affine;
  zero_shift.shift = vector<double>::Zero(hidden);
  REQUIRE_NOTHROW(reparam::scale::fold_linear_pair(up, down, zero_shift, {}, true));
}

TEST_CASE("fold_norm_gain leaves unit gains and an unchanged block, negative gains included",
          "[scale][fold]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5ca1e006);
  CAPTURE(seed);
  rng_stream rng(seed);
  const reparam::index tokens = 8;
  const reparam::index channels = 16;
  const bool has_bias = GENERATE(true, false);
  CAPTURE(has_bias);
  const matrix<double> z = random_tokens(rng, tokens, channels);
  norm_affine norm;
  norm.gain = random_vector(rng, channels, 0.1, 2.0);
  norm.gain[3] = -0.7f;  // negative gains exist in trained LayerNorms
  if (has_bias) {
    norm.bias = random_vector(rng, channels, -1.0, 1.0);
  }
  const linear q = random_linear(rng, 5, channels, true);
  const linear k = random_linear(rng, 7, channels, false);
  const auto folded = reparam::scale::fold_norm_gain(norm, {q, k});
  REQUIRE(folded.norm.gain == vector<float>::Ones(channels));
  REQUIRE(folded.norm.bias.size() == norm.bias.size());
  REQUIRE(folded.consumers[1].bias.size() == 0);

  const auto [x, x_folded, x_abs] = run_norm(layer_norm(z), norm, folded.norm);
  const std::vector<linear> originals = {q, k};
  for (std::size_t i = 0; i < 2; ++i) {
    const fold_check check =
        compare_outputs(run_linear(x_folded, folded.consumers[i]), run_linear(x, originals[i]),
                        run_linear_abs(x_abs, originals[i]));
    CAPTURE(i, check.worst_ulps);
    REQUIRE(check.worst_excess <= 0.0);
  }

  norm.gain[5] = 0.0f;
  REQUIRE_THROWS_WITH(reparam::scale::fold_norm_gain(norm, {q, k}),
                      Contains("scale::fold_norm_gain") && Contains("norm.gain[5] = 0"));
  REQUIRE_THROWS_WITH(reparam::scale::fold_norm_gain(norm, {}),
                      Contains("scale::fold_norm_gain") && Contains("consumers is empty"));
}

TEST_CASE("the folds refuse bad scales, shifts, sizes and consumer lists with clear messages",
          "[scale][fold]") {
  norm_affine norm;
  norm.gain = vector<float>::Ones(4);
  norm.bias = vector<float>::Zero(4);
  linear l;
  l.weight = matrix<float>::Ones(3, 4);
  l.bias = vector<float>::Zero(3);
  channel_affine good;
  good.scale = vector<double>::Ones(4);
  good.shift = vector<double>::Zero(4);
  const norm_affine norm_copy = norm;
  const linear l_copy = l;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();

  SECTION("r zero, negative, NaN or Inf names the channel and the value") {
    const std::vector<std::pair<double, std::string>> cases = {{0.0, "affine.scale[2] = 0"},
                                                               {-2.0, "affine.scale[2] = -2"},
                                                               {nan, "affine.scale[2] = nan"},
                                                               {inf, "affine.scale[2] = inf"}};
    for (const auto& [value, text] : cases) {
      channel_affine bad = good;
      bad.scale[2] = value;
      REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(norm, bad),
                          Contains("scale::fold_into_norm") && Contains(text));
      REQUIRE_THROWS_WITH(reparam::scale::fold_into_consumer(l, bad),
                          Contains("scale::fold_into_consumer") && Contains(text));
      REQUIRE_THROWS_WITH(reparam::scale::fold_channel_affine(norm, {l}, bad),
                          Contains("scale::fold_channel_affine") && Contains(text));
    }
  }
  SECTION("t non-finite") {
    channel_affine bad = good;
    bad.shift[1] = nan;
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(norm, bad),
                        Contains("affine.shift[1] = nan") && Contains("not finite"));
    bad.shift[1] = -inf;
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_consumer(l, bad),
                        Contains("affine.shift[1] = -inf"));
  }
  SECTION("sizes") {
    channel_affine short_scale = good;
    short_scale.scale = vector<double>::Ones(3);
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(norm, short_scale),
                        Contains("affine.scale has 3 entries, expected 4"));
    channel_affine short_shift = good;
    short_shift.shift = vector<double>::Zero(2);
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_consumer(l, short_shift),
                        Contains("affine.shift has 2 entries"));
    channel_affine empty;
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(norm_affine{}, good),
                        Contains("norm.gain is empty"));
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(norm, empty),
                        Contains("affine.scale is empty"));
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_consumer(l, empty),
                        Contains("affine.scale is empty"));
    norm_affine bad_bias = norm;
    bad_bias.bias = vector<float>::Zero(5);
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_norm(bad_bias, good),
                        Contains("norm.bias has 5 entries"));
    linear bad_linear_bias = l;
    bad_linear_bias.bias = vector<float>::Zero(4);
    REQUIRE_THROWS_WITH(reparam::scale::fold_into_consumer(bad_linear_bias, good),
                        Contains("layer.bias has 4 entries"));
  }
  SECTION("consumer lists") {
    REQUIRE_THROWS_WITH(reparam::scale::fold_channel_affine(norm, {}, good),
                        Contains("scale::fold_channel_affine") && Contains("consumers is empty"));
    linear wide = l;
    wide.weight = matrix<float>::Ones(3, 5);
    REQUIRE_THROWS_WITH(reparam::scale::fold_channel_affine(norm, {l, wide}, good),
                        Contains("consumers[1].weight has 5 input columns, expected 4"));
    linear nan_weight = l;
    nan_weight.weight(2, 1) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(reparam::scale::fold_channel_affine(norm, {nan_weight}, good),
                        Contains("consumers[0].weight(2, 1) = nan"));
    norm_affine nan_gain = norm;
    nan_gain.gain[3] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(reparam::scale::fold_channel_affine(nan_gain, {l}, good),
                        Contains("norm.gain[3] = inf"));
  }
  SECTION("linear pairs: sizes, sources out of range") {
    // Producer [4, 6] (4 channels), consumer reading them.
    linear producer;
    producer.weight = matrix<float>::Ones(4, 6);
    linear consumer;
    consumer.weight = matrix<float>::Ones(2, 5);
    REQUIRE_THROWS_WITH(reparam::scale::fold_linear_pair(producer, consumer, good),
                        Contains("scale::fold_linear_pair") &&
                            Contains("consumer.weight has 5 input columns, expected 4"));
    REQUIRE_THROWS_WITH(reparam::scale::fold_linear_pair(producer, consumer, good, {0, 1, 2, 3}),
                        Contains("consumer.weight has 5 input columns, expected 4"));
    REQUIRE_THROWS_WITH(reparam::scale::fold_linear_pair(producer, consumer, good, {0, 1, 7, 3, 0}),
                        Contains("consumer_source[2] = 7 is outside [0, 4)"));
    REQUIRE_THROWS_WITH(
        reparam::scale::fold_linear_pair(producer, consumer, good, {0, 1, 2, -1, 0}),
        Contains("consumer_source[3] = -1"));
    REQUIRE_NOTHROW(reparam::scale::fold_linear_pair(producer, consumer, good, {0, 1, 2, 3, 0}));
    channel_affine five;
    five.scale = vector<double>::Ones(5);
    REQUIRE_THROWS_WITH(reparam::scale::fold_linear_pair(producer, consumer, five),
                        Contains("affine.scale has 5 entries, expected 4"));
  }
  REQUIRE(same(norm, norm_copy));
  REQUIRE(same(l, l_copy));
}
