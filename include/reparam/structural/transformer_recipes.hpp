// SPDX-License-Identifier: Apache-2.0
// Transformer block recipes built from the linear transforms of linear_merge.hpp
// (RePaViT, arXiv 2505.21847; parallel-branch ViT depth reduction, arXiv 2511.19718):
//   * the RePaViT channel-idle FFN (arXiv 2505.21847 section 3; Ackesnal/RePaViT repavit.py
//     Mlp.reparam / RePaMlp): BatchNorm -> fc1 -> activation on the first a hidden channels,
//     identity on the rest -> BatchNorm -> fc2 -> + x, merged into one C x C Linear for the idle
//     path plus a narrow C -> a -> C FFN for the active channels;
//   * parallel-branch ViT blocks (arXiv 2511.19718, and T13 of the catalogue): attention and FFN
//     branches that read one shared normalised input, each with its own LayerNorm affine, merged
//     into one attention module (heads concatenated) and one FFN (hidden units concatenated).
// Both recipes are exact; they compute in double and return new layers.
#ifndef REPARAM_STRUCTURAL_TRANSFORMER_RECIPES_HPP
#define REPARAM_STRUCTURAL_TRANSFORMER_RECIPES_HPP

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/structural/linear_merge.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::structural {

// ---------------------------------------------------------------------------------------------
// RePaViT channel-idle FFN

/// The training form of a RePaViT FFN on tokens x in R^C (BatchNorms over flattened tokens):
///   h = fc1(bn1(x))                                  (hidden width D)
///   z = concat(act(h[0 : a]), h[a : D])              (a = active_channels)
///   y = fc2(bn2(z)) + x
/// with an elementwise activation `act` (GELU in RePaViT) that the struct does not store.
struct repavit_ffn {
  batch_norm bn1;  // C channels
  linear fc1;      // [D, C]
  batch_norm bn2;  // D channels
  linear fc2;      // [C, D]
  index active_channels = 0;
};

/// The inference form: y = linear_path(x) + active_down(act(active_up(x))).
struct repavit_ffn_merged {
  linear linear_path;  // [C, C]: the idle channels, the residual identity and every bias
  linear active_up;    // [a, C]: bn1 folded into the first a rows of fc1, with their bias
  linear active_down;  // [C, a]: bn2 folded into the first a columns of fc2; zero bias
};

/// Merges a RePaViT FFN (arXiv 2505.21847 section 3). With s1, t1 and s2, t2 the BatchNorm
/// affines, fc1' = fc1 diag(s1) with bias b1 + W1 t1 and fc2' = fc2 diag(s2) with bias
/// b2 + W2 t2 (T2); then the idle channels collapse with the residual (T12):
///   linear_path = W2'[:, a:] W1'[a:] + I, bias W2'[:, a:] b1'[a:] + b2'
///   active_up = (W1'[:a], b1'[:a]), active_down = (W2'[:, :a], 0).
/// a = 0 gives a single Linear (active_up [0, C], active_down [C, 0]); a = D gives
/// linear_path = (I, b2'). Exact. Throws reparam::error for a BatchNorm in training mode or
/// without running statistics, fc1 / fc2 / BatchNorm sizes that do not chain C -> D -> C, or
/// active_channels outside [0, D]. Allocates.
inline merge_result<repavit_ffn_merged> merge_repavit_ffn(const repavit_ffn& block) {
  constexpr const char* function = "structural::merge_repavit_ffn";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  lm::checked_bias(function, "fc1", block.fc1);
  lm::checked_bias(function, "fc2", block.fc2);
  const index channels = block.fc1.in_features();
  const index hidden = block.fc1.out_features();
  const index active = block.active_channels;
  check(block.fc2.in_features() == hidden, function, "fc2 takes ", block.fc2.in_features(),
        " inputs but fc1 gives ", hidden, " hidden units");
  check(block.fc2.out_features() == channels, function, "fc2 gives ", block.fc2.out_features(),
        " outputs but the residual needs fc1's ", channels, " inputs");
  check(active >= 0 && active <= hidden, function, "active_channels ", active, " must be in [0, ",
        hidden, "]");
  const channel_affine norm1 = bn_affine(function, block.bn1);
  const channel_affine norm2 = bn_affine(function, block.bn2);
  check(norm1.scale.size() == channels, function, "bn1 has ", norm1.scale.size(),
        " channels but fc1 takes ", channels, " inputs");
  check(norm2.scale.size() == hidden, function, "bn2 has ", norm2.scale.size(),
        " channels but fc1 gives ", hidden, " hidden units");
  const linear fc1 = fold_affine_before(norm1.scale, norm1.shift, block.fc1).layer;
  const linear fc2 = fold_affine_before(norm2.scale, norm2.shift, block.fc2).layer;
  const index idle = hidden - active;

  merge_result<repavit_ffn_merged> result;
  repavit_ffn_merged& merged = result.layer;
  merged.linear_path.weight = matrix<double>::Identity(channels, channels);
  merged.linear_path.bias = fc2.bias;
  if (idle > 0) {
    merged.linear_path.weight.noalias() += fc2.weight.rightCols(idle) * fc1.weight.bottomRows(idle);
    merged.linear_path.bias.noalias() += fc2.weight.rightCols(idle) * fc1.bias.tail(idle);
  }
  merged.active_up.weight = fc1.weight.topRows(active);
  merged.active_up.bias = fc1.bias.head(active);
  merged.active_down.weight = fc2.weight.leftCols(active);
  merged.active_down.bias = Eigen::VectorXd::Zero(channels);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Parallel-branch ViT blocks

/// A LayerNorm's elementwise affine x -> gamma * x + beta over C channels. Empty gamma means 1
/// (elementwise_affine=False), empty beta means 0 (bias=False).
struct norm_affine {
  Eigen::VectorXd gamma;
  Eigen::VectorXd beta;
};

/// One attention branch: its own LayerNorm affine, then self-attention.
struct vit_attention_branch {
  norm_affine norm;
  mhsa attention;
};

/// One FFN branch: its own LayerNorm affine, then the FFN (activation shared by all branches).
struct vit_ffn_branch {
  norm_affine norm;
  ffn mlp;
};

/// A sub-layer of a ViT block trained with parallel branches (arXiv 2511.19718). Every branch
/// reads the same normalised tokens z = (x - mean(x)) / sqrt(var(x) + eps), the non-affine part
/// of LayerNorm shared by all branches (one eps), applies its own affine, and the branch
/// outputs are summed:
///   y = sum_i attention_i(gamma_i z + beta_i) + sum_j mlp_j(gamma_j z + beta_j)
/// (the residual x + y stays outside). Either list may be empty: parallel attention only,
/// parallel FFNs only, or a parallel attention + FFN block sharing one LayerNorm.
struct parallel_vit_branches {
  std::vector<vit_attention_branch> attention;
  std::vector<vit_ffn_branch> mlp;
};

/// The merged sub-layer: y = attention(z) (if has_attention) + mlp(z) (if has_mlp), on the same
/// normalised z, now with a LayerNorm without affine.
struct parallel_vit_merged {
  mhsa attention;
  ffn mlp;
  bool has_attention = false;
  bool has_mlp = false;
};

/// Merges parallel ViT branches (arXiv 2511.19718; T13): each branch's LayerNorm
/// affine folds into its first projections (q, k, v, or the FFN's up; T2, exact for Linear),
/// then attention branches merge by head concatenation (merge_parallel_attention: equal head
/// dims, softmax scale 1/sqrt(head_dim) kept) and FFN branches by hidden-unit concatenation
/// (merge_parallel_ffn: one shared elementwise activation). Exact. Throws reparam::error for no
/// branches at all, branches of different input or output widths, a gamma/beta of the wrong
/// size or non-finite, different head dims, or inconsistent shapes within a branch. Allocates.
inline merge_result<parallel_vit_merged> merge_parallel_vit_branches(
    const parallel_vit_branches& block) {
  constexpr const char* function = "structural::merge_parallel_vit_branches";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(!block.attention.empty() || !block.mlp.empty(), function, "there are no branches");
  const index channels = block.attention.empty() ? block.mlp[0].mlp.up.in_features()
                                                 : block.attention[0].attention.q.in_features();
  const index out = block.attention.empty() ? block.mlp[0].mlp.down.out_features()
                                            : block.attention[0].attention.out.out_features();
  // The affine of one branch as (scale, shift) of C values, defaults filled in.
  const auto affine_of = [&](const norm_affine& norm, const std::string& name) {
    channel_affine affine{Eigen::VectorXd::Ones(channels), Eigen::VectorXd::Zero(channels)};
    if (norm.gamma.size() != 0) {
      lm::check_vector(function, (name + ".norm.gamma").c_str(), norm.gamma, channels,
                       "the shared input");
      affine.scale = norm.gamma;
    }
    if (norm.beta.size() != 0) {
      lm::check_vector(function, (name + ".norm.beta").c_str(), norm.beta, channels,
                       "the shared input");
      affine.shift = norm.beta;
    }
    return affine;
  };
  const auto check_widths = [&](const std::string& name, index branch_in, index branch_out) {
    check(branch_in == channels, function, name, " takes ", branch_in, " inputs but the first ",
          "branch takes ", channels, "; parallel branches must share one input");
    check(branch_out == out, function, name, " gives ", branch_out,
          " outputs but the first branch gives ", out, "; summed branches need one width");
  };

  std::vector<mhsa> attention;
  attention.reserve(block.attention.size());
  for (std::size_t i = 0; i < block.attention.size(); ++i) {
    const std::string name = reparam::detail::concat("attention[", i, "]");
    const mhsa& branch = block.attention[i].attention;
    lm::check_mhsa(function, name, branch);
    check_widths(name, branch.q.in_features(), branch.out.out_features());
    const index head_dim = block.attention[0].attention.head_dim();
    check(branch.head_dim() == head_dim, function, name, " has head dim ", branch.head_dim(),
          " but attention[0] has ", head_dim,
          "; heads of different dims cannot be concatenated into one attention module");
    const channel_affine affine = affine_of(block.attention[i].norm, name);
    mhsa folded;
    folded.q = fold_affine_before(affine.scale, affine.shift, branch.q).layer;
    folded.k = fold_affine_before(affine.scale, affine.shift, branch.k).layer;
    folded.v = fold_affine_before(affine.scale, affine.shift, branch.v).layer;
    folded.out = branch.out;
    folded.heads = branch.heads;
    attention.push_back(std::move(folded));
  }
  std::vector<ffn> mlp;
  mlp.reserve(block.mlp.size());
  for (std::size_t i = 0; i < block.mlp.size(); ++i) {
    const std::string name = reparam::detail::concat("mlp[", i, "]");
    const ffn& branch = block.mlp[i].mlp;
    lm::check_ffn(function, name, branch);
    check_widths(name, branch.up.in_features(), branch.down.out_features());
    const channel_affine affine = affine_of(block.mlp[i].norm, name);
    ffn folded;
    folded.up = fold_affine_before(affine.scale, affine.shift, branch.up).layer;
    folded.down = branch.down;
    mlp.push_back(std::move(folded));
  }

  merge_result<parallel_vit_merged> result;
  if (!attention.empty()) {
    result.layer.attention = merge_parallel_attention(attention).layer;
    result.layer.has_attention = true;
  }
  if (!mlp.empty()) {
    result.layer.mlp = merge_parallel_ffn(mlp).layer;
    result.layer.has_mlp = true;
  }
  return result;
}

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_TRANSFORMER_RECIPES_HPP
