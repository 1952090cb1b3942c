// SPDX-License-Identifier: Apache-2.0
// Concept erasure on the bundled stories260K (shared by examples/unlearn_concept.cpp, the demo's
// unlearn section and tests/examples/unlearn_real_test.cpp): paragraphs of the TinyStories valid
// head labelled by whether they mention a word, split into a fit part (builds the edit and trains
// probes) and a held-out part (every reported number), residual-stream states per paragraph, the
// writers of a llama::model's residual stream for unlearn::fold_residual_ablation, and the
// measurements: perplexity, the probability of the concept's token, a linear probe's balanced
// accuracy, and how often sampled stories mention the concept.
#ifndef REPARAM_EXAMPLES_COMMON_CONCEPT_ERASURE_HPP
#define REPARAM_EXAMPLES_COMMON_CONCEPT_ERASURE_HPP

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"
#include "runner/tokenizer.hpp"

namespace examples {

/// Whether `text` contains `word` delimited by non-letters on both sides (ASCII).
inline bool contains_word(std::string_view text, std::string_view word) {
  const auto letter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
  for (std::size_t at = text.find(word); at != std::string_view::npos;
       at = text.find(word, at + 1)) {
    const bool open = at == 0 || !letter(text[at - 1]);
    const std::size_t end = at + word.size();
    const bool close = end == text.size() || !letter(text[end]);
    if (open && close) return true;
  }
  return false;
}

/// Paragraphs as [BOS] + tokens, by label (mentions the concept: forget; else retain) and part.
struct concept_split {
  std::vector<std::vector<int>> fit_forget, fit_retain, test_forget, test_retain;
};

/// The non-empty pieces of `text` between blank lines ("\n\n"), ASCII whitespace stripped
/// (protocol (b)'s paragraphs, data/llama2c_stories260K/README.md).
inline std::vector<std::string_view> paragraphs_of(std::string_view text) {
  std::vector<std::string_view> out;
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find("\n\n", start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view piece = text.substr(start, end - start);
    while (!piece.empty() && space(piece.front())) piece.remove_prefix(1);
    while (!piece.empty() && space(piece.back())) piece.remove_suffix(1);
    if (!piece.empty()) out.push_back(piece);
    start = end + 2;
  }
  return out;
}

/// Splits `text` into paragraphs (paragraphs_of) and deals them out in blocks of 10 consecutive
/// paragraphs (a story rarely spans more than a block): blocks 0-6 of every 10 are the fit part,
/// blocks 7-9 the held-out part, so both parts sample the whole file. At most `max_paragraphs`
/// paragraphs are used; longer paragraphs are cut to max_tokens (the runner's max_batch bounds
/// a prefill).
inline concept_split split_by_concept(const llama::tokenizer& tok, std::string_view text,
                                      std::string_view word, std::size_t max_paragraphs,
                                      std::size_t max_tokens) {
  concept_split split;
  const std::vector<std::string_view> paragraphs = paragraphs_of(text);
  for (std::size_t i = 0; i < paragraphs.size() && i < max_paragraphs; ++i) {
    std::vector<int> tokens = tok.encode(paragraphs[i], true);
    if (tokens.size() > max_tokens) tokens.resize(max_tokens);
    const bool forget = contains_word(paragraphs[i], word);
    const bool fit = (i / 10) % 10 < 7;
    auto& part = fit ? (forget ? split.fit_forget : split.fit_retain)
                     : (forget ? split.test_forget : split.test_retain);
    part.push_back(std::move(tokens));
  }
  return split;
}

/// The first `count` sequences of `all` (all of them if fewer).
inline std::vector<std::vector<int>> first_of(const std::vector<std::vector<int>>& all,
                                              std::size_t count) {
  return {all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(count, all.size()))};
}

/// Mean residual state of every sequence (positions 1.., BOS excluded) at the n_layers + 1 points
/// block_input(0..n_layers-1) and final_input: result[p] is [sequences, dim], in double.
inline std::vector<reparam::matrix<double>> residual_means(
    llama::runner& r, const std::vector<std::vector<int>>& sequences) {
  const llama::model_config& config = r.bound_model().config();
  const auto points = static_cast<std::size_t>(config.n_layers + 1);
  std::vector<reparam::matrix<double>> means(
      points,
      reparam::matrix<double>::Zero(static_cast<reparam::index>(sequences.size()), config.dim));
  reparam::index row = 0;
  r.set_residual_hook([&](int layer, llama::residual_point point, reparam::matrix_map<float> x) {
    if (point != llama::residual_point::block_input &&
        point != llama::residual_point::final_input) {
      return;
    }
    if (x.rows() < 2) return;
    means[static_cast<std::size_t>(layer)].row(row) =
        x.bottomRows(x.rows() - 1).cast<double>().colwise().mean();
  });
  for (const std::vector<int>& s : sequences) {
    r.reset();
    r.prefill(s, false);
    ++row;
  }
  r.set_residual_hook({});
  return means;
}

/// The rows of every residual point stacked: [points * n, dim].
inline reparam::matrix<double> stack_points(const std::vector<reparam::matrix<double>>& per_point) {
  reparam::index rows = 0;
  for (const auto& m : per_point) rows += m.rows();
  reparam::matrix<double> out(rows, per_point.front().cols());
  reparam::index at = 0;
  for (const auto& m : per_point) {
    out.middleRows(at, m.rows()) = m;
    at += m.rows();
  }
  return out;
}

/// The concept direction: the difference of the mean residual states (every point stacked) of
/// the fit paragraphs with and without the concept, as a rank-1 subspace.
inline reparam::unlearn::subspace concept_direction(llama::runner& r, const concept_split& split) {
  const auto md =
      reparam::unlearn::mean_difference(stack_points(residual_means(r, split.fit_forget)),
                                        stack_points(residual_means(r, split.fit_retain)));
  return reparam::unlearn::orthonormal_basis(md.direction.transpose());
}

/// The residual stream of a llama2.c model: the token embedding (rows are tokens; tied to the
/// classifier), and wo and w2 of every block (rows are residual coordinates); no biases. `skip`
/// leaves the named writer out ("embedding", "wo.<l>" or "w2.<l>").
inline reparam::unlearn::residual_stream<float> llama_residual_stream(llama::model& m,
                                                                      const std::string& skip) {
  namespace ul = reparam::unlearn;
  ul::residual_stream<float> stream;
  stream.width = m.config().dim;
  stream.expected_writers = 1 + 2 * m.config().n_layers;
  if (skip != "embedding") {
    stream.writers.emplace_back("embedding", -1, ul::writer_layout::residual_columns,
                                m.mutable_token_embedding());
    stream.writers.back().tied_reader = true;
  }
  for (int l = 0; l < m.config().n_layers; ++l) {
    for (const llama::linear_kind kind : {llama::linear_kind::wo, llama::linear_kind::w2}) {
      const std::string name = (kind == llama::linear_kind::wo ? "wo." : "w2.") + std::to_string(l);
      if (name == skip) continue;
      stream.writers.emplace_back(name, l, ul::writer_layout::residual_rows,
                                  m.mutable_dense_weight({l, kind}));
    }
  }
  return stream;
}

/// Installs a run-time hook x <- x - x Q^T Q (Q [k, dim] orthonormal rows) at every residual point
/// and at the classifier's input: the unfolded twin of fold_residual_ablation with strength 1 on
/// a model whose classifier is tied to the embedding.
inline void install_projection_hook(llama::runner& r, const reparam::matrix<double>& q) {
  const reparam::matrix<float> qf = q.cast<float>();
  r.set_residual_hook([qf](int, llama::residual_point, reparam::matrix_map<float> x) {
    const reparam::matrix<double> xd = x.cast<double>();
    const reparam::matrix<double> qd = qf.cast<double>();
    x = (xd - (xd * qd.transpose()) * qd).cast<float>();
  });
}

/// max |logits(folded) - logits(original with install_projection_hook(q))| / max |logits| over
/// the first `count` of `sequences`: how far a fold is from the run-time projection.
inline double hook_mismatch(const llama::model& folded, const llama::model& original,
                            const reparam::matrix<double>& q,
                            const std::vector<std::vector<int>>& sequences, std::size_t count) {
  llama::runner a(folded);
  llama::runner b(original);
  install_projection_hook(b, q);
  double diff = 0.0;
  double scale = 0.0;
  for (std::size_t i = 0; i < std::min(count, sequences.size()); ++i) {
    a.reset();
    b.reset();
    const reparam::matrix<float> la = a.prefill(sequences[i]);
    const reparam::matrix<float> lb = b.prefill(sequences[i]);
    diff = std::max(diff, static_cast<double>((la - lb).cwiseAbs().maxCoeff()));
    scale = std::max(scale, static_cast<double>(lb.cwiseAbs().maxCoeff()));
  }
  return diff / scale;
}

/// Perplexity of sequences scored one by one from an empty cache, and the mean probability the
/// model gives `token` at the positions where it is the next token (-1 if it never is).
struct concept_scores {
  double ppl = 0.0;
  std::int64_t tokens = 0;
  double p_token = -1.0;
  std::int64_t token_positions = 0;
};

inline concept_scores score_concept(llama::runner& r, const std::vector<std::vector<int>>& seqs,
                                    int token) {
  double nll = 0.0;
  double p_sum = 0.0;
  concept_scores out;
  for (const std::vector<int>& s : seqs) {
    if (s.size() < 2) continue;
    r.reset();
    const auto logits = r.prefill(s.data(), static_cast<reparam::index>(s.size() - 1), true);
    for (reparam::index t = 0; t < logits.rows(); ++t) {
      const auto row = logits.row(t).cast<double>();
      const double top = row.maxCoeff();
      const double log_z = top + std::log((row.array() - top).exp().sum());
      const int target = s[static_cast<std::size_t>(t + 1)];
      nll += log_z - row(target);
      ++out.tokens;
      if (target == token) {
        p_sum += std::exp(row(target) - log_z);
        ++out.token_positions;
      }
    }
  }
  out.ppl = std::exp(nll / static_cast<double>(std::max<std::int64_t>(out.tokens, 1)));
  if (out.token_positions > 0) out.p_token = p_sum / static_cast<double>(out.token_positions);
  return out;
}

/// Balanced accuracy (mean of the two recalls; 0.5 = chance) on the test rows of a class-weighted
/// ridge least-squares probe (targets +-1, intercept, ridge 1e-6 tr(X^T W X) / d) fitted on the
/// train rows. Rows are samples.
inline double probe_balanced_accuracy(const reparam::matrix<double>& train_pos,
                                      const reparam::matrix<double>& train_neg,
                                      const reparam::matrix<double>& test_pos,
                                      const reparam::matrix<double>& test_neg) {
  const reparam::index d = train_pos.cols();
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(d + 1, d + 1);
  Eigen::VectorXd rhs = Eigen::VectorXd::Zero(d + 1);
  const auto accumulate = [&](const reparam::matrix<double>& x, double target) {
    const double weight = 0.5 / static_cast<double>(x.rows());
    for (reparam::index i = 0; i < x.rows(); ++i) {
      Eigen::VectorXd f(d + 1);
      f.head(d) = x.row(i).transpose();
      f(d) = 1.0;
      gram.noalias() += weight * f * f.transpose();
      rhs.noalias() += weight * target * f;
    }
  };
  accumulate(train_pos, 1.0);
  accumulate(train_neg, -1.0);
  gram.diagonal().head(d).array() += 1e-6 * gram.trace() / static_cast<double>(d);
  const Eigen::VectorXd beta = gram.ldlt().solve(rhs);
  const auto recall = [&](const reparam::matrix<double>& x, double sign) {
    reparam::index hits = 0;
    for (reparam::index i = 0; i < x.rows(); ++i) {
      const double score = x.row(i).dot(beta.head(d)) + beta(d);
      hits += score * sign > 0.0 ? 1 : 0;
    }
    return static_cast<double>(hits) / static_cast<double>(std::max<reparam::index>(x.rows(), 1));
  };
  return 0.5 * (recall(test_pos, 1.0) + recall(test_neg, -1.0));
}

/// Share of `samples` stories sampled from BOS (temperature 1, top-p 0.9, seeds seed..) that
/// mention `word`; the first story is returned in *first when given.
inline double concept_rate(llama::runner& r, const llama::tokenizer& tok, std::string_view word,
                           int samples, reparam::index steps, std::uint64_t seed,
                           std::string* first = nullptr) {
  int hits = 0;
  for (int i = 0; i < samples; ++i) {
    llama::sampler_params params;
    params.seed = seed + static_cast<std::uint64_t>(i);
    const std::string text =
        tok.decode(llama::generate(r, {llama::tokenizer::bos_id}, steps, params));
    hits += contains_word(text, word) ? 1 : 0;
    if (i == 0 && first != nullptr) *first = text;
  }
  return static_cast<double>(hits) / static_cast<double>(std::max(samples, 1));
}

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_CONCEPT_ERASURE_HPP
