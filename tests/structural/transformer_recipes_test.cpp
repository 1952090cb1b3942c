// SPDX-License-Identifier: Apache-2.0
// Transformer-side merges: the multi-head attention width merge (T13, linear_merge.hpp) and the
// recipes of structural/transformer_recipes.hpp (RePaViT channel-idle FFN, parallel-branch ViT
// blocks), against the unmerged blocks run with reference_linear, a BatchNorm / LayerNorm /
// GELU written from their formulas (here and in tests/support/structural_layers.hpp, with the
// random layers and tolerances) and a small reference attention written here (per-head
// loops, max-subtracted softmax). Refusals are checked for their messages.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/structural/linear_merge.hpp>
#include <reparam/structural/transformer_recipes.hpp>
#include <reparam/structural/types.hpp>

#include "support/random.hpp"
#include "support/reference_conv.hpp"
#include "support/structural_layers.hpp"

namespace {

using namespace reparam::structural;  // NOLINT(google-build-using-namespace): test file
using Catch::Matchers::Contains;
using reparam::matrix;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): test vocabulary

// GELU is 1.13-Lipschitz and |gelu(h)| <= |h|: a hidden error carries over at most 1.13x, and
// magnitudes through it are bounded by those of its input. Tolerances through it use this factor.
constexpr double activation_slope = 1.13;

/// Multi-head attention: q, k, v [heads * head_dim, in] and out [out, heads * head_dim], drawn in
/// that order.
mhsa random_attention(random_source& rng, reparam::index in, reparam::index out,
                      reparam::index heads, reparam::index head_dim) {
  return {rng.dense(heads * head_dim, in), rng.dense(heads * head_dim, in),
          rng.dense(heads * head_dim, in), rng.dense(out, heads * head_dim), heads};
}

/// LayerNorm without affine over each token (row): (x - mean) / sqrt(var + eps).
matrix<double> normalize_tokens(const matrix<double>& x, double epsilon) {
  matrix<double> z(x.rows(), x.cols());
  for (reparam::index t = 0; t < x.rows(); ++t) {
    const double mean = x.row(t).mean();
    double var = 0.0;
    for (reparam::index c = 0; c < x.cols(); ++c) {
      var += (x(t, c) - mean) * (x(t, c) - mean);
    }
    var /= static_cast<double>(x.cols());
    for (reparam::index c = 0; c < x.cols(); ++c) {
      z(t, c) = (x(t, c) - mean) / std::sqrt(var + epsilon);
    }
  }
  return z;
}

/// gamma * z + beta per feature (empty gamma: 1, empty beta: 0).
matrix<double> apply_affine(const matrix<double>& z, const norm_affine& norm) {
  matrix<double> y = z;
  for (reparam::index t = 0; t < z.rows(); ++t) {
    for (reparam::index c = 0; c < z.cols(); ++c) {
      const double gamma = norm.gamma.size() == 0 ? 1.0 : norm.gamma[c];
      const double beta = norm.beta.size() == 0 ? 0.0 : norm.beta[c];
      y(t, c) = gamma * z(t, c) + beta;
    }
  }
  return y;
}

/// |gamma| |z| + |beta|: the magnitude of the affine's terms.
matrix<double> affine_magnitude(const matrix<double>& z_abs, const norm_affine& norm) {
  norm_affine a;
  a.gamma = norm.gamma.size() == 0 ? Eigen::VectorXd() : norm.gamma.cwiseAbs().eval();
  a.beta = norm.beta.size() == 0 ? Eigen::VectorXd() : norm.beta.cwiseAbs().eval();
  return apply_affine(z_abs, a);
}

/// Reference self-attention with its intermediates: per head h, softmax(q_h k_h^T / sqrt(d))
/// v_h with the row maximum subtracted, heads concatenated, then the output projection.
struct attention_trace {
  matrix<double> q;
  matrix<double> k;
  matrix<double> v;
  matrix<double> output;
};

attention_trace run_attention(const matrix<double>& x, const mhsa& block) {
  attention_trace r;
  r.q = reference_linear(x, block.q);
  r.k = reference_linear(x, block.k);
  r.v = reference_linear(x, block.v);
  const reparam::index tokens = x.rows();
  const reparam::index d = r.q.cols() / block.heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  matrix<double> context = matrix<double>::Zero(tokens, r.q.cols());
  std::vector<double> weights(static_cast<std::size_t>(tokens));
  for (reparam::index h = 0; h < block.heads; ++h) {
    for (reparam::index t = 0; t < tokens; ++t) {
      double largest = -std::numeric_limits<double>::infinity();
      for (reparam::index j = 0; j < tokens; ++j) {
        double logit = 0.0;
        for (reparam::index e = 0; e < d; ++e) {
          logit += r.q(t, h * d + e) * r.k(j, h * d + e);
        }
        weights[static_cast<std::size_t>(j)] = logit * scale;
        largest = std::fmax(largest, logit * scale);
      }
      double total = 0.0;
      for (double& w : weights) {
        w = std::exp(w - largest);
        total += w;
      }
      for (reparam::index e = 0; e < d; ++e) {
        double sum = 0.0;
        for (reparam::index j = 0; j < tokens; ++j) {
          sum += weights[static_cast<std::size_t>(j)] * r.v(j, h * d + e);
        }
        context(t, h * d + e) = sum / total;
      }
    }
  }
  r.output = reference_linear(context, block.out);
  return r;
}

/// Bound on |merged - reference| for a sum of attention branches on the same tokens, where the
/// merged q / k / v differ from the reference ones by rounding only. Per branch (inputs_abs =
/// |input| of its projections, head dim d, T tokens, C inputs):
///   projections   dq = rounding_tolerance(C, Mq), Mq from |W_q| |input| + |b_q|; same k, v
///   logits        dl = sqrt(d) (dq Kmax + Qmax dk) + d sqrt(d) eps Qmax Kmax
///   softmax       sum_j |dp_j| <= 2 dl (its Jacobian has l1 norm <= 2) + (T + 3) eps rounding
///   context       dc = (2 dl + (2 T + 3) eps) Vmax + dv
///   output        rowsum|W_out| dc + (H d + branches + 4) eps (rowsum|W_out| Vmax + |b_out|)
/// summed over branches.
double attention_tolerance(const std::vector<mhsa>& branches,
                           const std::vector<matrix<double>>& inputs_abs,
                           const std::vector<attention_trace>& traces) {
  reparam::index total_width = 0;
  for (const mhsa& b : branches) {
    total_width += b.q.out_features();
  }
  double bound = 0.0;
  for (std::size_t i = 0; i < branches.size(); ++i) {
    const mhsa& b = branches[i];
    const double in = static_cast<double>(b.q.in_features());
    const double d = static_cast<double>(b.head_dim());
    const double tokens = static_cast<double>(traces[i].q.rows());
    const auto projection_error = [&](const linear& l) {
      return rounding_tolerance(in, reference_linear(inputs_abs[i], magnitude(l)).maxCoeff());
    };
    const double dq = projection_error(b.q);
    const double dk = projection_error(b.k);
    const double dv = projection_error(b.v);
    const double q_max = traces[i].q.cwiseAbs().maxCoeff();
    const double k_max = traces[i].k.cwiseAbs().maxCoeff();
    const double v_max = traces[i].v.cwiseAbs().maxCoeff();
    const double dl = std::sqrt(d) * (dq * k_max + q_max * dk) +
                      d * std::sqrt(d) * machine_epsilon * q_max * k_max;
    const double dc = (2.0 * dl + (2.0 * tokens + 3.0) * machine_epsilon) * v_max + dv;
    const double row_sum = b.out.weight.cwiseAbs().rowwise().sum().maxCoeff();
    const double out_magnitude =
        row_sum * v_max + (b.out.bias.size() == 0 ? 0.0 : b.out.bias.cwiseAbs().maxCoeff());
    bound += row_sum * dc +
             rounding_tolerance(
                 static_cast<double>(total_width + static_cast<reparam::index>(branches.size())),
                 out_magnitude);
  }
  return bound;
}

// RePaViT training form: bn1 -> fc1 -> GELU on the first a channels -> bn2 -> fc2 -> + x.
matrix<double> run_repavit(const matrix<double>& x, const repavit_ffn& block) {
  matrix<double> h = reference_linear(batch_norm_tokens(x, block.bn1), block.fc1);
  for (reparam::index t = 0; t < h.rows(); ++t) {
    for (reparam::index j = 0; j < block.active_channels; ++j) {
      h(t, j) = gelu(h(t, j));
    }
  }
  return reference_linear(batch_norm_tokens(h, block.bn2), block.fc2) + x;
}

// RePaViT inference form: linear_path(x) + active_down(GELU(active_up(x))).
matrix<double> run_repavit_merged(const matrix<double>& x, const repavit_ffn_merged& merged) {
  const matrix<double> hidden = reference_linear(x, merged.active_up).unaryExpr(&gelu);
  return reference_linear(x, merged.linear_path) + reference_linear(hidden, merged.active_down);
}

repavit_ffn random_repavit(random_source& rng, reparam::index channels, reparam::index hidden,
                           reparam::index active) {
  return {rng.norm(channels), rng.dense(hidden, channels), rng.norm(hidden),
          rng.dense(channels, hidden), active};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// T13, attention

TEST_CASE("merge_parallel_attention concatenates the heads of parallel attentions",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(201);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index in = 7;
  const reparam::index out = 5;
  const reparam::index head_dim = 3;
  std::vector<mhsa> branches = {random_attention(rng, in, out, 2, head_dim),
                                random_attention(rng, in, out, 1, head_dim),
                                random_attention(rng, in, out, 3, head_dim)};
  branches[1].k.bias.resize(0);  // a projection without bias
  const matrix<double> x = rng.uniform(6, in, -2.0, 2.0);

  const merge_result<mhsa> merged = merge_parallel_attention(branches);
  CHECK(merged.is_exact);
  CHECK(merged.layer.heads == 6);
  CHECK(merged.layer.head_dim() == head_dim);  // softmax scale stays 1/sqrt(3)

  matrix<double> expected = matrix<double>::Zero(6, out);
  std::vector<attention_trace> traces;
  std::vector<matrix<double>> inputs_abs;
  for (const mhsa& branch : branches) {
    traces.push_back(run_attention(x, branch));
    expected += traces.back().output;
    inputs_abs.push_back(x.cwiseAbs());
  }
  const double tolerance = attention_tolerance(branches, inputs_abs, traces);
  CAPTURE(tolerance);
  CHECK(max_abs_diff(run_attention(x, merged.layer).output, expected) <= tolerance);
  // Branch order permutes heads, not the function.
  const std::vector<mhsa> reordered = {branches[2], branches[0], branches[1]};
  CHECK(max_abs_diff(run_attention(x, merge_parallel_attention(reordered).layer).output,
                     expected) <= tolerance);
}

TEST_CASE("merge_parallel_attention refuses mismatched head dims and shapes", "[structural]") {
  random_source rng(reparam::test::test_seed(202));
  const mhsa a = random_attention(rng, 6, 6, 2, 3);
  CHECK_THROWS_WITH(merge_parallel_attention({a, random_attention(rng, 6, 6, 2, 4)}),
                    Contains("structural::merge_parallel_attention") &&
                        Contains("branches[1] has head dim 4") && Contains("branches[0] has 3") &&
                        Contains("1/sqrt(head_dim)"));
  CHECK_THROWS_WITH(merge_parallel_attention({}), Contains("no branches"));
  CHECK_THROWS_WITH(merge_parallel_attention({a, random_attention(rng, 5, 6, 2, 3)}),
                    Contains("branches[1] takes 5 inputs but branches[0] takes 6"));
  CHECK_THROWS_WITH(merge_parallel_attention({a, random_attention(rng, 6, 4, 2, 3)}),
                    Contains("branches[1] gives 4 outputs but branches[0] gives 6"));
  mhsa odd = random_attention(rng, 6, 6, 1, 7);
  odd.heads = 2;
  CHECK_THROWS_WITH(merge_parallel_attention({odd}), Contains("2 heads do not divide the 7"));
  mhsa narrow_k = a;
  narrow_k.k = rng.dense(5, 6);
  CHECK_THROWS_WITH(merge_parallel_attention({narrow_k}),
                    Contains("q, k, v give 6, 5, 6 features"));
  mhsa no_heads = a;
  no_heads.heads = 0;
  CHECK_THROWS_WITH(merge_parallel_attention({no_heads}), Contains("heads is 0"));
}

// ---------------------------------------------------------------------------------------------
// RePaViT

TEST_CASE("merge_repavit_ffn reproduces the channel-idle FFN for every active width",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(203);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index shapes[][2] = {{7, 28}, {5, 13}};
  for (const auto& shape : shapes) {
    const reparam::index channels = shape[0];
    const reparam::index hidden = shape[1];
    for (reparam::index active : {reparam::index{0}, reparam::index{1}, hidden / 4, hidden}) {
      CAPTURE(channels, hidden, active);
      const repavit_ffn block = random_repavit(rng, channels, hidden, active);
      const matrix<double> x = rng.uniform(10, channels, -2.0, 2.0);  // 10 tokens
      const matrix<double> expected = run_repavit(x, block);

      const merge_result<repavit_ffn_merged> merged = merge_repavit_ffn(block);
      CHECK(merged.is_exact);
      const repavit_ffn_merged& m = merged.layer;
      REQUIRE(m.linear_path.out_features() == channels);
      REQUIRE(m.linear_path.in_features() == channels);
      REQUIRE(m.active_up.out_features() == active);
      REQUIRE(m.active_down.in_features() == active);
      CHECK(m.active_down.bias == Eigen::VectorXd::Zero(channels));

      // Magnitude: the training path on absolute values (|gelu(h)| <= |h|), plus the residual.
      const matrix<double> h_abs =
          reference_linear(batch_norm_magnitude(x.cwiseAbs(), block.bn1), magnitude(block.fc1));
      const matrix<double> y_abs =
          reference_linear(batch_norm_magnitude(h_abs, block.bn2), magnitude(block.fc2)) +
          x.cwiseAbs();
      // Longest path: C terms into the hidden units, D terms out; two BatchNorm folds (depth 8);
      // the GELU slope on the active part.
      const double tolerance =
          activation_slope *
          rounding_tolerance(static_cast<double>(channels + hidden), y_abs.maxCoeff(), 8.0);
      CAPTURE(tolerance);
      CHECK(max_abs_diff(run_repavit_merged(x, m), expected) <= tolerance);

      // Rounded once to float: each weight moves by <= 2^-24 relative, so the output moves by
      // <= 2^-24 times the merged path's own magnitude (times the GELU slope on the active part).
      repavit_ffn_merged rounded;
      for (const auto& pair : {std::make_pair(&m.linear_path, &rounded.linear_path),
                               std::make_pair(&m.active_up, &rounded.active_up),
                               std::make_pair(&m.active_down, &rounded.active_down)}) {
        const linear_f f = to_float(*pair.first);
        *pair.second = linear{f.weight.cast<double>(), f.bias.cast<double>()};
      }
      const matrix<double> merged_abs =
          reference_linear(x.cwiseAbs(), magnitude(m.linear_path)) +
          reference_linear(reference_linear(x.cwiseAbs(), magnitude(m.active_up)),
                           magnitude(m.active_down));
      CHECK(max_abs_diff(run_repavit_merged(x, rounded), expected) <=
            activation_slope * 2.0 * float_roundoff * merged_abs.maxCoeff() + tolerance);

      if (active == hidden) {
        // Every hidden channel is active: the linear path is the residual plus fc2's bias.
        CHECK(m.linear_path.weight == matrix<double>::Identity(channels, channels));
        CHECK(m.linear_path.bias == fold_batch_norm_before(block.bn2, block.fc2).layer.bias);
      }
    }
  }
}

TEST_CASE("merge_repavit_ffn refuses training BatchNorms and inconsistent shapes", "[structural]") {
  random_source rng(reparam::test::test_seed(204));
  const repavit_ffn block = random_repavit(rng, 5, 12, 3);
  repavit_ffn bad = block;
  bad.bn1.is_training = true;
  CHECK_THROWS_WITH(merge_repavit_ffn(bad),
                    Contains("structural::merge_repavit_ffn") && Contains("training mode"));
  bad = block;
  bad.bn2.has_running_stats = false;
  CHECK_THROWS_WITH(merge_repavit_ffn(bad), Contains("no running statistics"));
  bad = block;
  bad.active_channels = 13;
  CHECK_THROWS_WITH(merge_repavit_ffn(bad), Contains("active_channels 13 must be in [0, 12]"));
  bad.active_channels = -1;
  CHECK_THROWS_WITH(merge_repavit_ffn(bad), Contains("active_channels -1"));
  bad = block;
  bad.fc2 = rng.dense(4, 12);
  CHECK_THROWS_WITH(merge_repavit_ffn(bad),
                    Contains("fc2 gives 4 outputs") && Contains("residual"));
  bad = block;
  bad.fc2 = rng.dense(5, 11);
  CHECK_THROWS_WITH(merge_repavit_ffn(bad), Contains("fc2 takes 11 inputs but fc1 gives 12"));
  bad = block;
  bad.bn2 = rng.norm(11);
  CHECK_THROWS_WITH(merge_repavit_ffn(bad), Contains("bn2 has 11 channels"));
}

// ---------------------------------------------------------------------------------------------
// Parallel-branch ViT blocks

TEST_CASE("merge_parallel_vit_branches folds LayerNorm affines and concatenates branches",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(205);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index channels = 9;
  const reparam::index tokens = 5;
  const reparam::index head_dim = 4;
  const matrix<double> x = rng.uniform(tokens, channels, -3.0, 3.0);
  const matrix<double> z = normalize_tokens(x, 1e-6);  // the shared normalisation

  parallel_vit_branches full;
  full.attention.push_back({{rng.vector(channels, 0.5, 1.5), rng.vector(channels, -1.0, 1.0)},
                            random_attention(rng, channels, channels, 2, head_dim)});
  full.attention.push_back(
      {{}, random_attention(rng, channels, channels, 1, head_dim)});  // no affine
  full.mlp.push_back({{rng.vector(channels, -1.5, 1.5), rng.vector(channels, -1.0, 1.0)},
                      ffn{rng.dense(10, channels), rng.dense(channels, 10)}});
  full.mlp.push_back({{rng.vector(channels, 0.5, 1.5), {}},  // LayerNorm(bias=False)
                      ffn{rng.dense(3, channels), rng.dense(channels, 3)}});

  for (int variant = 0; variant < 3; ++variant) {  // both, attention only, FFN only
    CAPTURE(variant);
    parallel_vit_branches block = full;
    if (variant == 1) {
      block.mlp.clear();
    }
    if (variant == 2) {
      block.attention.clear();
    }
    matrix<double> expected = matrix<double>::Zero(tokens, channels);
    std::vector<mhsa> attention;
    std::vector<attention_trace> traces;
    std::vector<matrix<double>> inputs_abs;
    for (const vit_attention_branch& branch : block.attention) {
      traces.push_back(run_attention(apply_affine(z, branch.norm), branch.attention));
      expected += traces.back().output;
      attention.push_back(branch.attention);
      inputs_abs.push_back(affine_magnitude(z.cwiseAbs(), branch.norm));
    }
    double tolerance = attention.empty() ? 0.0 : attention_tolerance(attention, inputs_abs, traces);
    double mlp_magnitude = 0.0;
    for (const vit_ffn_branch& branch : block.mlp) {
      const matrix<double> input = apply_affine(z, branch.norm);
      expected += reference_linear(reference_linear(input, branch.mlp.up).unaryExpr(&gelu),
                                   branch.mlp.down);
      mlp_magnitude +=
          reference_linear(reference_linear(affine_magnitude(z.cwiseAbs(), branch.norm),
                                            magnitude(branch.mlp.up)),
                           magnitude(branch.mlp.down))
              .maxCoeff();
    }
    // FFN path: C + 13 hidden terms, the affine fold, the GELU slope.
    tolerance +=
        activation_slope * rounding_tolerance(static_cast<double>(channels + 13), mlp_magnitude);
    CAPTURE(tolerance);

    const merge_result<parallel_vit_merged> merged = merge_parallel_vit_branches(block);
    CHECK(merged.is_exact);
    const parallel_vit_merged& m = merged.layer;
    CHECK(m.has_attention == !block.attention.empty());
    CHECK(m.has_mlp == !block.mlp.empty());
    matrix<double> actual = matrix<double>::Zero(tokens, channels);
    if (m.has_attention) {
      CHECK(m.attention.heads == 3);
      CHECK(m.attention.head_dim() == head_dim);
      actual += run_attention(z, m.attention).output;
    }
    if (m.has_mlp) {
      CHECK(m.mlp.up.out_features() == 13);
      actual += reference_linear(reference_linear(z, m.mlp.up).unaryExpr(&gelu), m.mlp.down);
    }
    CHECK(max_abs_diff(actual, expected) <= tolerance);
  }
}

TEST_CASE("merge_parallel_vit_branches refuses branches that cannot share one input",
          "[structural]") {
  random_source rng(reparam::test::test_seed(206));
  const reparam::index channels = 6;
  parallel_vit_branches block;
  block.attention.push_back({{}, random_attention(rng, channels, channels, 2, 3)});
  block.mlp.push_back({{}, ffn{rng.dense(4, channels), rng.dense(channels, 4)}});
  CHECK_NOTHROW(merge_parallel_vit_branches(block));

  CHECK_THROWS_WITH(merge_parallel_vit_branches(parallel_vit_branches{}),
                    Contains("structural::merge_parallel_vit_branches") && Contains("no branches"));
  parallel_vit_branches bad = block;
  bad.mlp[0].norm.gamma = Eigen::VectorXd::Ones(5);
  CHECK_THROWS_WITH(merge_parallel_vit_branches(bad),
                    Contains("mlp[0].norm.gamma has 5 values") && Contains("6"));
  bad = block;
  bad.attention[0].norm.beta = Eigen::VectorXd::Zero(channels);
  bad.attention[0].norm.beta[1] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(merge_parallel_vit_branches(bad),
                    Contains("attention[0].norm.beta has non-finite value"));
  bad = block;
  bad.attention.push_back({{}, random_attention(rng, channels, channels, 3, 2)});
  CHECK_THROWS_WITH(merge_parallel_vit_branches(bad),
                    Contains("attention[1] has head dim 2 but attention[0] has 3"));
  bad = block;
  bad.mlp[0].mlp.down = rng.dense(5, 4);
  CHECK_THROWS_WITH(merge_parallel_vit_branches(bad),
                    Contains("mlp[0] gives 5 outputs but the first branch gives 6"));
  bad = block;
  bad.mlp[0].mlp.up = rng.dense(4, 7);
  CHECK_THROWS_WITH(merge_parallel_vit_branches(bad),
                    Contains("mlp[0] takes 7 inputs but the first branch takes 6"));
}
