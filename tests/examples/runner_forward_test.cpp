// SPDX-License-Identifier: Apache-2.0
// The runner's forward pass on the bundled stories260K: both loaders, the reference greedy run
// (tokens and logits) through the decode and the prefill paths, swappable linear layers, the
// capture hook, the allocation-free decode step, and clear errors on bad files and arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>

#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"
#include "runner_fixture.hpp"

using llama::linear_id;
using llama::linear_kind;
// reparam::index by a short name (a global `index` would clash with POSIX index()).
using index_t = reparam::index;

namespace {

// The reference logits come from numpy float32; the runner sums in a different order (GEMM
// blocking) and computes RoPE angles in double. Observed max |diff| ~1.6e-5 on logits of
// magnitude ~10, so 1e-4 leaves margin without hiding a real error (a wrong RoPE or norm moves
// logits by >1e-1).
constexpr double logit_tolerance = 1e-4;

template <class A, class B>
double max_abs_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff());
}

// Feeds the reference tokens one by one and returns the max |diff| over the 32 reference rows.
double decode_logit_diff(const llama::model& m) {
  const auto& ref = runner_test::reference();
  llama::runner r(m);
  double diff = 0.0;
  for (index_t i = 0; i < ref.logits.rows(); ++i) {
    const auto logits = r.step(ref.tokens[static_cast<std::size_t>(i)]);
    diff = std::max(
        diff, static_cast<double>((logits.transpose() - ref.logits.row(i)).cwiseAbs().maxCoeff()));
  }
  return diff;
}

// Logits of a whole token sequence through prefill (one batch).
reparam::matrix<float> prefill_logits(const llama::model& m, const std::vector<int>& tokens) {
  llama::runner r(m);
  return r.prefill(tokens);
}

std::vector<int> reference_prefix(std::size_t count) {
  const auto& tokens = runner_test::reference().tokens;
  return {tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(count)};
}

std::string read_bytes(const std::string& path) { return llama::read_file(path, "test"); }

// A linear layer that records its calls and delegates to another layer.
class recording_linear final : public llama::linear_layer {
 public:
  recording_linear(const llama::linear_layer& inner, std::vector<index_t>* batches)
      : inner_(inner), batches_(batches) {}
  index_t rows() const override { return inner_.rows(); }
  index_t cols() const override { return inner_.cols(); }
  void forward(const reparam::const_matrix_map<float>& x,
               reparam::matrix_map<float> y) const override {
    batches_->push_back(x.rows());
    inner_.forward(x, y);
  }

 private:
  const llama::linear_layer& inner_;
  std::vector<index_t>* batches_;
};

// y = 0: an output projection that contributes nothing.
class zero_linear final : public llama::linear_layer {
 public:
  zero_linear(index_t rows, index_t cols) : rows_(rows), cols_(cols) {}
  index_t rows() const override { return rows_; }
  index_t cols() const override { return cols_; }
  void forward(const reparam::const_matrix_map<float>&,
               reparam::matrix_map<float> y) const override {
    y.setZero();
  }

 private:
  index_t rows_, cols_;
};

}  // namespace

TEST_CASE("load_llama2c reads the stories260K header and its 260,032 parameters",
          "[runner][real]") {
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  const llama::model_config& c = m.config();
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.head_size() == 8);
  CHECK(c.kv_dim() == 32);
  CHECK(m.parameter_count() == 260032);
  // The first float after the 28-byte header is token_embedding[0, 0]; wq of layer 0 follows
  // the embedding and rms_att.
  const std::string bytes = read_bytes(runner_test::model_bin);
  float first = 0.0f, wq0 = 0.0f;
  std::memcpy(&first, bytes.data() + 28, sizeof(float));
  std::memcpy(&wq0, bytes.data() + 28 + 4 * (512 * 64 + 5 * 64), sizeof(float));
  CHECK(m.token_embedding()(0, 0) == first);
  CHECK(m.dense_weight({0, linear_kind::wq})(0, 0) == wq0);
  for (int layer = 0; layer < c.n_layers; ++layer) {
    for (const linear_kind kind : llama::all_linear_kinds) {
      const llama::linear_shape s = llama::shape_of(c, kind);
      CAPTURE(llama::to_string({layer, kind}));
      CHECK(m.dense_weight({layer, kind}).rows() == s.rows);
      CHECK(m.dense_weight({layer, kind}).cols() == s.cols);
      CHECK(m.linear({layer, kind}).rows() == s.rows);
      CHECK(m.linear({layer, kind}).cols() == s.cols);
    }
  }
}

TEST_CASE("the llama2.c and safetensors loaders give identical weights", "[runner][real]") {
  const llama::model a = llama::load_llama2c(runner_test::model_bin);
  const llama::model b = llama::load_model(runner_test::model_safetensors);
  const llama::model_config& c = a.config();
  const llama::model_config& d = b.config();
  REQUIRE((c.dim == d.dim && c.hidden_dim == d.hidden_dim && c.n_layers == d.n_layers &&
           c.n_heads == d.n_heads && c.n_kv_heads == d.n_kv_heads && c.vocab_size == d.vocab_size &&
           c.seq_len == d.seq_len));
  CHECK(a.token_embedding() == b.token_embedding());
  CHECK(a.rms_att() == b.rms_att());
  CHECK(a.rms_ffn() == b.rms_ffn());
  CHECK(a.rms_final() == b.rms_final());
  for (int layer = 0; layer < c.n_layers; ++layer) {
    for (const linear_kind kind : llama::all_linear_kinds) {
      CAPTURE(llama::to_string({layer, kind}));
      CHECK(a.dense_weight({layer, kind}) == b.dense_weight({layer, kind}));
    }
  }
}

TEST_CASE("greedy decoding reproduces the reference tokens and logits on the decode path",
          "[runner][real]") {
  const auto& ref = runner_test::reference();
  REQUIRE(ref.tokens.size() == 201);
  REQUIRE(ref.logits.rows() == 32);
  REQUIRE(ref.logits.cols() == 512);
  for (const std::string& path : {runner_test::model_bin, runner_test::model_safetensors}) {
    CAPTURE(path);
    const llama::model m = llama::load_model(path);
    llama::runner r(m);
    const std::vector<int> tokens = llama::generate(r, {llama::bos_token}, 200, {0.0f, 0.0f, 0});
    CHECK(tokens == ref.tokens);
    const double diff = decode_logit_diff(m);
    WARN("decode path, " << path.substr(path.rfind('/') + 1)
                         << ": max |logit - reference| over 32x512 = " << diff);
    CHECK(diff < logit_tolerance);
  }
}

TEST_CASE("the batched prefill path matches the reference logits and the greedy tokens",
          "[runner][real]") {
  const auto& ref = runner_test::reference();
  const llama::model m = llama::load_llama2c(runner_test::model_bin);

  const reparam::matrix<float> logits = prefill_logits(m, reference_prefix(32));
  const double diff = max_abs_diff(logits, ref.logits);
  WARN("prefill path: max |logit - reference| over 32x512 = " << diff);
  CHECK(diff < logit_tolerance);

  // All 201 tokens in one batch: row i's argmax is the greedy token i + 1.
  const reparam::matrix<float> all = prefill_logits(m, ref.tokens);
  int mismatches = 0;
  for (index_t i = 0; i + 1 < all.rows(); ++i) {
    const auto row = reparam::const_vector_map<float>(all.row(i).data(), all.cols());
    mismatches += llama::argmax(row) != ref.tokens[static_cast<std::size_t>(i + 1)] ? 1 : 0;
  }
  CHECK(mismatches == 0);

  // Chunked prefill on top of a filled KV cache equals the single batch.
  llama::runner r(m);
  const std::vector<int> prefix = reference_prefix(32);
  const reparam::matrix<float> head = r.prefill(prefix.data(), 10);
  const reparam::matrix<float> tail = r.prefill(prefix.data() + 10, 22);
  CHECK(r.position() == 32);
  CHECK(max_abs_diff(head, ref.logits.topRows(10)) < logit_tolerance);
  CHECK(max_abs_diff(tail, ref.logits.bottomRows(22)) < logit_tolerance);
  // all_logits = false returns the last row only.
  r.reset();
  const reparam::matrix<float> last = r.prefill(prefix, /*all_logits=*/false);
  REQUIRE(last.rows() == 1);
  CHECK(max_abs_diff(last, ref.logits.bottomRows(1)) < logit_tolerance);
}

TEST_CASE("set_linear is honoured: a delegating wrapper is exact, a zeroed wo changes logits",
          "[runner][real]") {
  llama::model m = llama::load_llama2c(runner_test::model_bin);
  const std::vector<int> prompt = reference_prefix(16);
  const reparam::matrix<float> baseline = prefill_logits(m, prompt);

  // Every layer wrapped: identical logits, one call per linear per forward, batch = tokens.
  const llama::model reference_model = llama::load_llama2c(runner_test::model_bin);
  std::vector<index_t> batches;
  for (int layer = 0; layer < m.config().n_layers; ++layer) {
    for (const linear_kind kind : llama::all_linear_kinds) {
      m.set_linear({layer, kind}, std::make_unique<recording_linear>(
                                      reference_model.linear({layer, kind}), &batches));
    }
  }
  CHECK(prefill_logits(m, prompt) == baseline);
  CHECK(batches.size() == 35);
  CHECK(std::all_of(batches.begin(), batches.end(), [](index_t b) { return b == 16; }));

  // A zero output projection in layer 2 changes the logits; the same edit made on the dense
  // weight in place gives the same logits; reset_linear restores the model.
  const linear_id wo2{2, linear_kind::wo};
  m.set_linear(wo2, std::make_unique<zero_linear>(64, 64));
  const reparam::matrix<float> zeroed = prefill_logits(m, prompt);
  CHECK(max_abs_diff(zeroed, baseline) > 1e-2);
  for (int layer = 0; layer < m.config().n_layers; ++layer) {
    for (const linear_kind kind : llama::all_linear_kinds) m.reset_linear({layer, kind});
  }
  CHECK(prefill_logits(m, prompt) == baseline);
  m.mutable_dense_weight(wo2).setZero();
  CHECK(prefill_logits(m, prompt) == zeroed);

  // Wrong shapes and null layers are refused with the id in the message.
  CHECK_THROWS_AS(m.set_linear({0, linear_kind::wk}, std::make_unique<zero_linear>(64, 64)),
                  reparam::error);
  CHECK_THROWS_WITH(m.set_linear({0, linear_kind::wk}, std::make_unique<zero_linear>(64, 64)),
                    Catch::Contains("layers.0.wk") && Catch::Contains("expected [32, 64]"));
  CHECK_THROWS_AS(m.set_linear({0, linear_kind::wq}, nullptr), reparam::error);
  CHECK_THROWS_AS(m.set_linear({5, linear_kind::wq}, std::make_unique<zero_linear>(64, 64)),
                  reparam::error);
}

TEST_CASE("the capture hook sees every linear input with the right shapes", "[runner][real]") {
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  const llama::model_config& c = m.config();
  llama::runner r(m);
  struct captured {
    linear_id id;
    reparam::matrix<float> x;
  };
  std::vector<captured> calls;
  r.set_capture([&](linear_id id, const reparam::const_matrix_map<float>& x) {
    calls.push_back({id, x});
  });
  const std::vector<int> prompt = reference_prefix(7);
  r.prefill(prompt);

  REQUIRE(calls.size() == static_cast<std::size_t>(c.n_layers * llama::linear_kind_count));
  // Per block: wq, wk, wv (one shared input), wo, then w1, w3 (shared), w2.
  const linear_kind order[] = {linear_kind::wq, linear_kind::wk, linear_kind::wv, linear_kind::wo,
                               linear_kind::w1, linear_kind::w3, linear_kind::w2};
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const captured& call = calls[i];
    CAPTURE(i, llama::to_string(call.id));
    CHECK(call.id.layer == static_cast<int>(i / 7));
    CHECK(call.id.kind == order[i % 7]);
    CHECK(call.x.rows() == 7);
    CHECK(call.x.cols() == llama::shape_of(c, call.id.kind).cols);
  }
  for (int layer = 0; layer < c.n_layers; ++layer) {
    const auto base = static_cast<std::size_t>(layer * 7);
    CHECK(calls[base].x == calls[base + 1].x);      // wq and wk
    CHECK(calls[base].x == calls[base + 2].x);      // wq and wv
    CHECK(calls[base + 4].x == calls[base + 5].x);  // w1 and w3
  }

  // The wq input of token 0 in layer 0 is rmsnorm(embedding[BOS]) * rms_att[0], recomputed here
  // in double.
  const Eigen::VectorXd e = m.token_embedding().row(llama::bos_token).transpose().cast<double>();
  const double inv_rms = 1.0 / std::sqrt(e.squaredNorm() / 64.0 + 1e-5);
  const Eigen::VectorXd expected =
      (e * inv_rms).cwiseProduct(m.rms_att().row(0).transpose().cast<double>());
  const Eigen::VectorXd got = calls.front().x.row(0).transpose().cast<double>();
  double diff = 0.0;
  for (Eigen::Index i = 0; i < got.size(); ++i)
    diff = std::max(diff, std::abs(got(i) - expected(i)));
  CAPTURE(diff);
  CHECK(diff < 1e-5);

  // Decode steps capture [1, in] blocks; clearing the hook stops the calls.
  calls.clear();
  r.step(prompt.back());
  REQUIRE(calls.size() == 35);
  CHECK(calls[0].x.rows() == 1);
  r.set_capture(nullptr);
  calls.clear();
  r.step(prompt.back());
  CHECK(calls.empty());
}

TEST_CASE("a decode step does not allocate", "[runner][real]") {
  // Eigen's check is an eigen_assert, so this bites in builds without NDEBUG (the dev preset);
  // in Release it only runs the steps.
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  llama::runner r(m);
  int token = llama::bos_token;
  token = llama::argmax(r.step(token));
  Eigen::internal::set_is_malloc_allowed(false);
  for (int i = 0; i < 20; ++i) token = llama::argmax(r.step(token));
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(r.position() == 21);
}

TEST_CASE("runner arguments are checked", "[runner][real]") {
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  llama::runner r(m, 8);
  const std::vector<int> nine(9, 5);
  CHECK_THROWS_WITH(r.prefill(nine), Catch::Contains("count 9 not in [1, max_batch 8]"));
  CHECK_THROWS_AS(r.prefill(nine.data(), 0), reparam::error);
  CHECK_THROWS_WITH(r.step(512), Catch::Contains("512 not in [0, vocab_size 512)"));
  CHECK_THROWS_AS(r.step(-1), reparam::error);
  CHECK_THROWS_AS(llama::runner(m, 513), reparam::error);
  for (int i = 0; i < 512; ++i) r.step(5);
  CHECK_THROWS_WITH(r.step(5), Catch::Contains("exceeds seq_len 512"));
  r.reset();
  CHECK_NOTHROW(r.step(5));
  CHECK_THROWS_AS(llama::generate(r, {}, 10, {}), reparam::error);
  CHECK_THROWS_AS(llama::generate(r, {1}, 513, {}), reparam::error);
  CHECK_THROWS_AS(llama::generate(r, {1}, 10, {-1.0f, 0.9f, 0}), reparam::error);

  // Building a model from weights checks the config and every shape.
  CHECK_THROWS_WITH(llama::model(m.config(), llama::model_weights{}),
                    Catch::Contains("token_embedding is [0, 0], expected [512, 64]"));
  llama::model_config odd = m.config();
  odd.n_heads = 7;
  CHECK_THROWS_AS(llama::model(odd, llama::model_weights{}), reparam::error);
}

TEST_CASE("bad checkpoint files give errors naming the file and the values", "[runner][real]") {
  const std::string good = read_bytes(runner_test::model_bin);
  const auto with_header_value = [&](int slot, std::int32_t value) {
    std::string bytes = good;
    std::memcpy(bytes.data() + 4 * slot, &value, sizeof(value));
    return bytes;
  };
  const auto load_bytes = [](const std::string& name, const std::string& bytes) {
    const std::string path = runner_test::scratch_path(name);
    runner_test::write_bytes(path, bytes);
    return llama::load_llama2c(path);
  };

  CHECK_THROWS_AS(llama::load_llama2c(runner_test::scratch_path("missing.bin")), reparam::io_error);
  CHECK_THROWS_WITH(
      llama::load_llama2c(runner_test::scratch_path("missing.bin")),
      Catch::StartsWith("llama::load_llama2c: cannot open") && Catch::Contains("missing.bin"));
  CHECK_THROWS_WITH(load_bytes("short.bin", good.substr(0, 10)),
                    Catch::Contains("10 bytes, fewer than the 28-byte header"));
  CHECK_THROWS_WITH(load_bytes("truncated.bin", good.substr(0, 100000)),
                    Catch::Contains("has 100000 bytes but its header (dim 64") &&
                        Catch::Contains("implies 1056540"));
  CHECK_THROWS_WITH(load_bytes("longer.bin", good + "xxxx"), Catch::Contains("has 1056544 bytes"));
  CHECK_THROWS_WITH(load_bytes("heads.bin", with_header_value(3, 7)),
                    Catch::Contains("n_heads 7 does not divide dim 64"));
  CHECK_THROWS_WITH(load_bytes("kv_heads.bin", with_header_value(4, 3)),
                    Catch::Contains("n_kv_heads 3 does not divide n_heads 8"));
  CHECK_THROWS_WITH(load_bytes("dim.bin", with_header_value(0, 32)),
                    Catch::Contains("(dim 32,") && Catch::Contains("implies"));
  CHECK_THROWS_WITH(load_bytes("zero.bin", with_header_value(2, 0)),
                    Catch::Contains("header values out of range") && Catch::Contains("n_layers 0"));
  CHECK_THROWS_WITH(load_bytes("huge.bin", with_header_value(1, std::numeric_limits<int>::max())),
                    Catch::Contains("out of range"));
  CHECK_THROWS_WITH(load_bytes("untied.bin", with_header_value(5, -512)),
                    Catch::Contains("untied classifier"));
  std::string nan_weight = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan_weight.data() + 28 + 4 * (512 * 64 + 5 * 64 + 3), &nan, sizeof(nan));
  CHECK_THROWS_WITH(
      load_bytes("nan.bin", nan_weight),
      Catch::Contains("layers.0.wq has non-finite value") && Catch::Contains("flat index 3"));

  // safetensors: missing file, and a header value edited in place (same length).
  CHECK_THROWS_AS(llama::load_safetensors(runner_test::scratch_path("missing.safetensors")),
                  reparam::io_error);
  std::string st = read_bytes(runner_test::model_safetensors);
  const std::string key = "\"n_heads\":\"8\"";
  const std::size_t at = st.find(key);
  REQUIRE(at != std::string::npos);
  st[at + key.size() - 2] = '7';
  const std::string st_path = runner_test::scratch_path("heads.safetensors");
  runner_test::write_bytes(st_path, st);
  CHECK_THROWS_WITH(llama::load_model(st_path),
                    Catch::StartsWith("llama::load_safetensors") &&
                        Catch::Contains("n_heads 7 does not divide dim 64"));
}
