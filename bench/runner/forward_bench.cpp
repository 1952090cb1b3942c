// SPDX-License-Identifier: Apache-2.0
// Tokens per second of the reference runner on the bundled stories260K (dense Eigen layers, one
// thread): decode steps through the full 512-token context, and 512-token prefill windows. Later
// issues add their linear-layer formats as further impls of the same ops.
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "runner/eval.hpp"

namespace {

const std::string data_dir = REPARAM_DATA_DIR;

const llama::model& dense_model() {
  static const llama::model m =
      llama::load_llama2c(data_dir + "/llama2c_stories260K/stories260K.bin");
  return m;
}

// The first 512 inputs of the README's paragraph stream (real text).
const std::vector<int>& text_window() {
  static const std::vector<int> window = [] {
    const llama::tokenizer tok =
        llama::tokenizer::load(data_dir + "/llama2c_stories260K/tok512.bin", 512);
    const std::string text =
        llama::read_text_file(data_dir + "/tinystories_text/tinystories_valid_head.txt");
    std::vector<int> stream = llama::paragraph_stream(tok, text, 512);
    stream.resize(512);
    return stream;
  }();
  return window;
}

// One iteration = one decode step; the context cycles through positions 0..511 so the average
// attention length is ~256, as in generation of a full context.
void decode(benchmark::State& state) {
  const llama::model& m = dense_model();
  llama::runner r(m);
  int token = llama::bos_token;
  for (auto _ : state) {
    if (r.position() == m.config().seq_len) r.reset();
    auto logits = r.step(token);
    token = llama::argmax(logits);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel("stories260K");
}

// One iteration = one 512-token window from an empty cache, all logits (as perplexity needs).
void prefill(benchmark::State& state) {
  const llama::model& m = dense_model();
  const std::vector<int>& window = text_window();
  llama::runner r(m);
  for (auto _ : state) {
    r.reset();
    const auto logits = r.prefill(window);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * static_cast<long>(window.size())),
                         benchmark::Counter::kIsRate);
  state.SetLabel("stories260K");
}

}  // namespace

BENCHMARK(decode)->Name("runner/decode/dense");
BENCHMARK(prefill)->Name("runner/prefill/dense")->Unit(benchmark::kMillisecond);
