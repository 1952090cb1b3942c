// SPDX-License-Identifier: Apache-2.0
// fold_residual_ablation against running the unfolded network with the projection applied at run
// time, on a toy residual network in double (embeddings, position embeddings, RMSNorm readers,
// a causal mixing writer stored [hidden, d] and an MLP writer stored [d, hidden], both with
// biases, tied or untied classifier): the fold equals the hook to 1e-12 when every writer is
// listed, and a fold that skips one writer (or a bias) does not.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "support/random.hpp"

namespace {

namespace ul = reparam::unlearn;
using reparam::index;
using reparam::matrix;
using reparam::vector;

constexpr index vocab = 11;
constexpr index width = 8;
constexpr index hidden = 12;
constexpr index positions = 5;
constexpr int layers = 3;

/// Unit-variance uniform test data, a new Philox stream per call (salted by the run's seed).
struct source {
  std::uint64_t seed;
  std::uint64_t calls = 0;
  matrix<double> unit_matrix(index rows, index cols) {
    const std::uint64_t salt = reparam::test::test_seed(seed * 7919 + calls++);
    return std::sqrt(3.0) * reparam::test::random_matrix<double>(rows, cols, salt);
  }
  vector<double> unit_vector(index size) { return unit_matrix(size, 1).col(0); }
};

/// The toy network's tensors. mix_out is stored [hidden, d] (Conv1D layout: columns are residual
/// coordinates), mlp_out [d, hidden] (nn.Linear layout).
struct toy_net {
  matrix<double> embedding;   // [vocab, d]
  matrix<double> position;    // [positions, d]
  matrix<double> classifier;  // [vocab, d] (ignored when tied)
  bool tied = false;
  std::vector<vector<double>> gain_mix, gain_mlp;
  vector<double> gain_final;
  std::vector<matrix<double>> mix_in, mix_out, mlp_in, mlp_out;
  std::vector<vector<double>> mix_bias, mlp_bias;
};

toy_net make_net(std::uint64_t seed, bool tied) {
  source gen{seed};
  toy_net n;
  n.embedding = gen.unit_matrix(vocab, width);
  n.position = 0.3 * gen.unit_matrix(positions, width);
  n.classifier = gen.unit_matrix(vocab, width);
  n.tied = tied;
  const double in_scale = 1.0 / std::sqrt(static_cast<double>(width));
  const double out_scale = 1.0 / std::sqrt(static_cast<double>(hidden));
  for (int l = 0; l < layers; ++l) {
    n.gain_mix.push_back(vector<double>::Constant(width, 1.0) + 0.2 * gen.unit_vector(width));
    n.gain_mlp.push_back(vector<double>::Constant(width, 1.0) + 0.2 * gen.unit_vector(width));
    n.mix_in.push_back(in_scale * gen.unit_matrix(hidden, width));
    n.mix_out.push_back(out_scale * gen.unit_matrix(hidden, width));
    n.mlp_in.push_back(in_scale * gen.unit_matrix(hidden, width));
    n.mlp_out.push_back(out_scale * gen.unit_matrix(width, hidden));
    n.mix_bias.push_back(0.1 * gen.unit_vector(width));
    n.mlp_bias.push_back(0.1 * gen.unit_vector(width));
  }
  n.gain_final = vector<double>::Constant(width, 1.0) + 0.2 * gen.unit_vector(width);
  return n;
}

/// Where the run-time projection P is applied.
enum class hook {
  none,
  readers,  // to the input of every reader (block norms, final norm), the stream itself untouched
  stream,   // refusal-direction style: to the stream at block entry and after every write
};

/// Row-wise RMSNorm with gain (eps 1e-5).
matrix<double> rms_norm(const matrix<double>& x, const vector<double>& gain) {
  matrix<double> y(x.rows(), x.cols());
  for (index t = 0; t < x.rows(); ++t) {
    const double ms = x.row(t).squaredNorm() / static_cast<double>(x.cols());
    const double inv = 1.0 / std::sqrt(ms + 1e-5);
    for (index c = 0; c < x.cols(); ++c) {
      y(t, c) = x(t, c) * inv * gain(c);
    }
  }
  return y;
}

/// Logits [positions, vocab] for tokens; `p` is the dense projector (rows: x <- x p, p symmetric).
/// classifier_hook projects the classifier's input too (the hooked twin of a folded tied
/// embedding).
matrix<double> forward(const toy_net& n, const std::vector<index>& tokens, hook where,
                       const matrix<double>& p, bool classifier_hook) {
  const index steps = static_cast<index>(tokens.size());
  matrix<double> x(steps, width);
  for (index t = 0; t < steps; ++t) {
    x.row(t) = n.embedding.row(tokens[static_cast<std::size_t>(t)]) + n.position.row(t);
  }
  const auto read = [&](const matrix<double>& stream) -> matrix<double> {
    return where == hook::readers ? matrix<double>(stream * p) : stream;
  };
  for (int l = 0; l < layers; ++l) {
    const auto sl = static_cast<std::size_t>(l);
    if (where == hook::stream) {
      x = x * p;
    }
    // Causal mean mixing: u_t = tanh(mix_in mean_{s<=t} norm(x_s)), write u_t^T mix_out + b.
    const matrix<double> a = rms_norm(read(x), n.gain_mix[sl]);
    matrix<double> write_mix(steps, width);
    for (index t = 0; t < steps; ++t) {
      const vector<double> mean = a.topRows(t + 1).colwise().mean().transpose();
      const vector<double> u = (n.mix_in[sl] * mean).array().tanh().matrix();
      write_mix.row(t) = (u.transpose() * n.mix_out[sl]) + n.mix_bias[sl].transpose();
    }
    if (where == hook::stream) {
      write_mix = write_mix * p;
    }
    x += write_mix;
    // MLP: silu(mlp_in f) then mlp_out.
    const matrix<double> f = rms_norm(read(x), n.gain_mlp[sl]);
    matrix<double> write_mlp(steps, width);
    for (index t = 0; t < steps; ++t) {
      const vector<double> pre = n.mlp_in[sl] * f.row(t).transpose();
      const vector<double> act = (pre.array() / (1.0 + (-pre.array()).exp())).matrix();
      write_mlp.row(t) = (n.mlp_out[sl] * act + n.mlp_bias[sl]).transpose();
    }
    if (where == hook::stream) {
      write_mlp = write_mlp * p;
    }
    x += write_mlp;
  }
  matrix<double> z = rms_norm(read(x), n.gain_final);
  if (classifier_hook) {
    z = z * p;
  }
  const matrix<double>& c = n.tied ? n.embedding : n.classifier;
  return z * c.transpose();
}

/// I - s Q^T Q written out entry by entry (independent of the library's eraser).
matrix<double> dense_projector(const matrix<double>& q, double s) {
  matrix<double> p = matrix<double>::Identity(q.cols(), q.cols());
  for (index i = 0; i < q.cols(); ++i) {
    for (index j = 0; j < q.cols(); ++j) {
      double dot = 0.0;
      for (index r = 0; r < q.rows(); ++r) {
        dot += q(r, i) * q(r, j);
      }
      p(i, j) -= s * dot;
    }
  }
  return p;
}

/// Names of the writers in listing order.
std::vector<std::string> writer_names() {
  std::vector<std::string> names{"embedding", "position"};
  for (int l = 0; l < layers; ++l) {
    names.push_back("mix_out." + std::to_string(l));
    names.push_back("mlp_out." + std::to_string(l));
  }
  return names;
}

/// The residual stream of `n`, every writer listed except `skip` (by name); biases folded unless
/// skip_biases.
ul::residual_stream<double> describe(toy_net& n, const std::string& skip = "",
                                     bool skip_biases = false) {
  using layout = ul::writer_layout;
  ul::residual_stream<double> stream;
  stream.width = width;
  stream.expected_writers = 2 + 2 * layers;
  const auto add = [&](const std::string& name, int layer, layout lay, matrix<double>& w,
                       vector<double>* b, bool tied_reader) {
    if (name == skip) {
      return;
    }
    ul::residual_writer<double> writer = b != nullptr && !skip_biases
                                             ? ul::residual_writer<double>(name, layer, lay, w, *b)
                                             : ul::residual_writer<double>(name, layer, lay, w);
    writer.tied_reader = tied_reader;
    stream.writers.push_back(writer);
  };
  add("embedding", -1, layout::residual_columns, n.embedding, nullptr, n.tied);
  add("position", -1, layout::residual_columns, n.position, nullptr, false);
  for (int l = 0; l < layers; ++l) {
    const auto sl = static_cast<std::size_t>(l);
    add("mix_out." + std::to_string(l), l, layout::residual_columns, n.mix_out[sl], &n.mix_bias[sl],
        false);
    add("mlp_out." + std::to_string(l), l, layout::residual_rows, n.mlp_out[sl], &n.mlp_bias[sl],
        false);
  }
  return stream;
}

const std::vector<index> tokens{3, 7, 0, 10, 7};

ul::subspace planted_directions(std::uint64_t seed, index k) {
  source gen{seed};
  return ul::orthonormal_basis(gen.unit_matrix(k, width));
}

double max_abs(const matrix<double>& a) { return a.cwiseAbs().maxCoeff(); }

}  // namespace

TEST_CASE(
    "A full ablation fold equals the run-time projection of the stream at every residual "
    "point",
    "[unlearn][ablation]") {
  for (const bool tied : {false, true}) {
    for (const reparam::index k : {reparam::index{1}, reparam::index{3}}) {
      CAPTURE(tied, k);
      const toy_net original = make_net(11 + static_cast<std::uint64_t>(k), tied);
      const ul::subspace q = planted_directions(5, k);
      const matrix<double> p = dense_projector(q.directions, 1.0);
      toy_net folded = original;
      ul::residual_stream<double> stream = describe(folded);
      const ul::ablation_report report = ul::fold_residual_ablation(stream, q);
      CHECK(report.exact);
      CHECK(report.reason.empty());
      CHECK(report.missing == 0);
      CHECK(report.folded == writer_names());
      CHECK(report.tied.size() == (tied ? 1u : 0u));
      const matrix<double> plain = forward(original, tokens, hook::none, p, false);
      const matrix<double> hooked_stream = forward(original, tokens, hook::stream, p, tied);
      const matrix<double> hooked_readers = forward(original, tokens, hook::readers, p, tied);
      const matrix<double> got = forward(folded, tokens, hook::none, p, false);
      CHECK(max_abs(got - hooked_stream) <= 1e-12);
      CHECK(max_abs(got - hooked_readers) <= 1e-12);
      // The ablation changes the function (so the comparisons above can fail).
      CHECK(max_abs(got - plain) > 1e-2);
      // Nothing folded writes into span Q any more.
      for (const ul::residual_writer<double>& w : stream.writers) {
        const matrix<double> into = w.layout == ul::writer_layout::residual_rows
                                        ? matrix<double>(q.directions * w.weight())
                                        : matrix<double>(w.weight() * q.directions.transpose());
        CHECK(max_abs(into) <= 1e-13);
      }
    }
  }
}

TEST_CASE("A uniform partial strength equals projecting every reader's input, not the stream",
          "[unlearn][ablation]") {
  const toy_net original = make_net(21, true);
  const ul::subspace q = planted_directions(6, 2);
  const double s = 0.5;
  const matrix<double> p = dense_projector(q.directions, s);
  toy_net folded = original;
  ul::residual_stream<double> stream = describe(folded);
  const ul::ablation_report report =
      ul::fold_residual_ablation(stream, q, ul::ablation_schedule::uniform(s, layers));
  CHECK(report.exact);
  CHECK(report.uniform);
  const matrix<double> got = forward(folded, tokens, hook::none, p, false);
  CHECK(max_abs(got - forward(original, tokens, hook::readers, p, true)) <= 1e-12);
  // P_s is not idempotent: compounding it along the stream is a different network.
  CHECK(max_abs(got - forward(original, tokens, hook::stream, p, true)) > 1e-3);
}

TEST_CASE("A fold that skips one writer or the biases is inexact and differs from the hook",
          "[unlearn][ablation]") {
  const toy_net original = make_net(31, false);
  const ul::subspace q = planted_directions(7, 2);
  const matrix<double> p = dense_projector(q.directions, 1.0);
  const matrix<double> hooked = forward(original, tokens, hook::readers, p, false);
  for (const std::string& skip : writer_names()) {
    CAPTURE(skip);
    toy_net folded = original;
    ul::residual_stream<double> stream = describe(folded, skip);
    const ul::ablation_report report = ul::fold_residual_ablation(stream, q);
    CHECK_FALSE(report.exact);
    CHECK(report.missing == 1);
    CHECK_THAT(report.reason, Catch::Contains("1 of 8 writers are not listed"));
    CHECK(max_abs(forward(folded, tokens, hook::none, p, false) - hooked) > 1e-4);
  }
  // Biases are part of their writer: leaving them out breaks the equivalence (refusal_direction
  // issue #15), although the report cannot see it.
  toy_net folded = original;
  ul::residual_stream<double> stream = describe(folded, "", true);
  ul::fold_residual_ablation(stream, q);
  CHECK(max_abs(forward(folded, tokens, hook::none, p, false) - hooked) > 1e-3);
  // Without a statement of the architecture's writer count the fold never claims exactness.
  toy_net unknown = original;
  ul::residual_stream<double> unknown_stream = describe(unknown);
  unknown_stream.expected_writers = -1;
  const ul::ablation_report report = ul::fold_residual_ablation(unknown_stream, q);
  CHECK_FALSE(report.exact);
  CHECK_THAT(report.reason, Catch::Contains("expected_writers is unknown"));
}

TEST_CASE("heretic's kernel schedule gives the hand-computed strengths and an inexact fold",
          "[unlearn][ablation]") {
  const ul::ablation_schedule kernel = ul::ablation_schedule::kernel(1.0, 2.0, 1.0, 0.2, 4);
  REQUIRE(kernel.layer_strength.size() == 4);
  CHECK(kernel.embedding_strength == 0.0);
  CHECK(kernel.layer_strength[0] == Approx(0.6).margin(1e-15));
  CHECK(kernel.layer_strength[1] == Approx(1.0).margin(1e-15));
  CHECK(kernel.layer_strength[2] == Approx(0.6).margin(1e-15));
  CHECK(kernel.layer_strength[3] == Approx(0.2).margin(1e-15));
  const ul::ablation_schedule narrow = ul::ablation_schedule::kernel(0.0, 0.5, 1.0, 0.0, 3);
  CHECK(narrow.layer_strength == std::vector<double>{1.0, 0.0, 0.0});

  toy_net original = make_net(41, false);
  const ul::subspace q = planted_directions(8, 1);
  toy_net folded = original;
  ul::residual_stream<double> stream = describe(folded);
  stream.writers[3].scale = 0.5;  // mlp_out.0 at half strength (per-component weight)
  const ul::ablation_schedule schedule = ul::ablation_schedule::kernel(1.0, 2.0, 1.0, 0.2, layers);
  const ul::ablation_report report = ul::fold_residual_ablation(stream, q, schedule);
  CHECK_FALSE(report.exact);
  CHECK_FALSE(report.uniform);
  CHECK_THAT(report.reason, Catch::Contains("strength differs"));
  const std::vector<double> expected{0.0, 0.0, 0.6, 0.3, 1.0, 1.0, 0.6, 0.6};
  REQUIRE(report.strength.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CHECK(report.strength[i] == Approx(expected[i]).margin(1e-15));
  }
  // Strength 0 leaves the embeddings bit for bit; each block writer matches its own strength.
  CHECK(folded.embedding == original.embedding);
  const matrix<double> p03 = dense_projector(q.directions, 0.3);
  CHECK(max_abs(folded.mlp_out[0] - p03 * original.mlp_out[0]) <= 1e-14);
  CHECK(max_abs(folded.mlp_bias[0] - p03 * original.mlp_bias[0]) <= 1e-14);
  const matrix<double> p06 = dense_projector(q.directions, 0.6);
  CHECK(max_abs(folded.mix_out[2] - original.mix_out[2] * p06) <= 1e-14);
}

TEST_CASE("Float writers are folded in double and rounded once", "[unlearn][ablation]") {
  toy_net net = make_net(51, false);
  const ul::subspace q = planted_directions(9, 2);
  const matrix<double> p = dense_projector(q.directions, 1.0);
  matrix<float> w = net.mlp_out[0].cast<float>();
  vector<float> b = net.mlp_bias[0].cast<float>();
  matrix<float> e = net.embedding.cast<float>();
  const matrix<double> w_expected = p * w.cast<double>();
  const vector<double> b_expected = p * b.cast<double>();
  const matrix<double> e_expected = e.cast<double>() * p;
  ul::residual_stream<float> stream;
  stream.width = width;
  stream.expected_writers = 2;
  stream.writers.emplace_back("w", 0, ul::writer_layout::residual_rows, w, b);
  stream.writers.emplace_back("e", -1, ul::writer_layout::residual_columns, e);
  const ul::ablation_report report = ul::fold_residual_ablation(stream, q);
  CHECK(report.exact);
  // Rounded once: within half an ulp of the double result.
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c = 0; c < w.cols(); ++c) {
      CHECK(w(r, c) == static_cast<float>(w_expected(r, c)));
    }
  }
  CHECK(max_abs(e.cast<double>() - e_expected) <= 1e-6 * max_abs(e_expected));
  CHECK(max_abs(b.cast<double>() - b_expected) <= 1e-6 * max_abs(b_expected));
}

TEST_CASE("fold_residual_ablation rejects bad streams and changes nothing", "[unlearn][ablation]") {
  const toy_net original = make_net(61, false);
  const ul::subspace q = planted_directions(10, 2);
  const auto expect_untouched = [&original](const toy_net& n) {
    CHECK(n.embedding == original.embedding);
    CHECK(n.position == original.position);
    for (std::size_t l = 0; l < static_cast<std::size_t>(layers); ++l) {
      CHECK(n.mix_out[l] == original.mix_out[l]);
      CHECK(n.mlp_out[l] == original.mlp_out[l]);
      CHECK(n.mix_bias[l] == original.mix_bias[l]);
      CHECK(n.mlp_bias[l] == original.mlp_bias[l]);
    }
  };
  const auto fails = [&](const auto& edit, const std::string& message) {
    toy_net n = original;
    ul::residual_stream<double> stream = describe(n);
    ul::ablation_schedule schedule;
    edit(n, stream, schedule);
    toy_net before = n;
    REQUIRE_THROWS_WITH(
        ul::fold_residual_ablation(stream, q, schedule),
        Catch::Contains("unlearn::fold_residual_ablation") && Catch::Contains(message));
    CHECK(n.mlp_out[0] == before.mlp_out[0]);
    CHECK(n.embedding == before.embedding);
    if (message.find("non-finite") == std::string::npos) {
      expect_untouched(n);
    }
  };
  using stream_t = ul::residual_stream<double>;
  fails([](toy_net&, stream_t& s, ul::ablation_schedule&) { s.width = width + 1; },
        "directions have dim 8 but stream.width is 9");
  fails([](toy_net&, stream_t& s, ul::ablation_schedule&) { s.writers.clear(); },
        "stream.writers is empty");
  fails([](toy_net&, stream_t& s, ul::ablation_schedule&) { s.expected_writers = 3; },
        "expected_writers 3 is smaller than the 8 writers listed");
  fails([](toy_net& n, stream_t&, ul::ablation_schedule&) { n.mlp_out[2](1, 3) = std::nan(""); },
        "writer 'mlp_out.2' weight has non-finite value nan at (1, 3)");
  fails([](toy_net& n, stream_t&,
           ul::ablation_schedule&) { n.mix_bias[1](4) = std::numeric_limits<double>::infinity(); },
        "writer 'mix_out.1' bias has non-finite value inf at 4");
  fails(
      [](toy_net&, stream_t& s, ul::ablation_schedule&) {
        s.writers.push_back(s.writers[3]);
        s.expected_writers = 9;
      },
      "writer 'mlp_out.0' views a weight already listed");
  fails([](toy_net&, stream_t& s,
           ul::ablation_schedule&) { s.writers[4].layout = ul::writer_layout::residual_rows; },
        "writer 'mix_out.1' is 12 x 8 but its residual rows must number 8");
  fails(
      [](toy_net&, stream_t& s, ul::ablation_schedule&) {
        const ul::residual_writer<double> w = s.writers[5];
        s.writers[5] =
            ul::residual_writer<double>(w.name, w.layer, w.layout, w.weight(), w.bias().head(3));
      },
      "writer 'mlp_out.1' has a bias of size 3 (must be 8)");
  fails([](toy_net&, stream_t&,
           ul::ablation_schedule& sch) { sch = ul::ablation_schedule::uniform(1.0, 2); },
        "writer 'mix_out.2' has layer 2 but the schedule has 2 layer strengths");
  fails([](toy_net&, stream_t& s, ul::ablation_schedule&) { s.writers[6].layer = -2; },
        "writer 'mix_out.2' has layer -2");
  fails([](toy_net&, stream_t& s, ul::ablation_schedule&) { s.writers[0].scale = std::nan(""); },
        "writer 'embedding' has scale nan");
  fails(
      [](toy_net&, stream_t&, ul::ablation_schedule& sch) {
        sch.embedding_strength = std::numeric_limits<double>::infinity();
      },
      "schedule.embedding_strength inf must be finite");
  REQUIRE_THROWS_WITH(ul::ablation_schedule::kernel(0.0, 0.0, 1.0, 0.0, 3),
                      Catch::Contains("unlearn::ablation_schedule::kernel") &&
                          Catch::Contains("width 0 must be finite and > 0"));
  REQUIRE_THROWS_WITH(ul::ablation_schedule::uniform(1.0, -1),
                      Catch::Contains("unlearn::ablation_schedule::uniform") &&
                          Catch::Contains("layers -1 must be >= 0"));
  // A non-orthonormal basis is refused by the eraser, before any writer is changed.
  toy_net n = original;
  ul::residual_stream<double> stream = describe(n);
  ul::subspace skewed = q;
  skewed.directions.row(1) += 0.1 * skewed.directions.row(0);
  REQUIRE_THROWS(ul::fold_residual_ablation(stream, skewed));
  expect_untouched(n);
}
