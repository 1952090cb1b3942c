// SPDX-License-Identifier: Apache-2.0
// The runner's text side on the bundled data: tok512 encoding (hand-checked pieces, byte
// fallback, round trips over the TinyStories text), decoding the reference greedy run into
// llama2.c's expected story, both perplexity protocols against the README's numbers, and sampling.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>

#include "runner/eval.hpp"
#include "runner_fixture.hpp"

namespace {

// llama2.c test_all.py expected_stdout for `run stories260K.bin -z tok512.bin -t 0.0 -n 200`.
const char* const llama2c_expected_story =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. "
    "She said, \"I want to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what "
    "to do.\"\n"
    "Lily didn't want to help her mom, so she";

// The README's perplexities are given to 3 decimals; the runner agrees to ~1e-4.
constexpr double ppl_tolerance = 0.01;

}  // namespace

TEST_CASE("tok512 encodes hand-checked strings like llama2.c", "[runner][real]") {
  const llama::tokenizer& tok = runner_test::tok512();
  REQUIRE(tok.vocab_size() == 512);
  CHECK(tok.max_token_length() == 7);
  CHECK(tok.piece(1) == "\n<s>\n");
  CHECK(tok.piece(3) == "<0x00>");
  CHECK(tok.piece(410) == " ");
  CHECK(tok.lookup(" Once") == 403);
  CHECK(tok.lookup("no such piece") == -1);

  using tokens = std::vector<int>;
  CHECK(tok.encode("") == tokens{});
  CHECK(tok.encode("", true, true) == tokens{1, 2});
  // Whole-word pieces; the dummy prefix makes "Once" into " Once".
  CHECK(tok.encode("Once upon a time") == tokens{403, 407, 261, 378});
  CHECK(tok.encode("Once upon a time", true) == tokens{1, 403, 407, 261, 378});
  CHECK(tok.encode("a") == tokens{261});
  // Merges pick the best-scoring pair first: " He" + "ll" + "o", " w" + "or" + "ld".
  CHECK(tok.encode("Hello world") == tokens{346, 306, 414, 263, 304, 341});
  // Characters without a piece fall back to their UTF-8 bytes (id = byte + 3): CJK, emoji, '\n'.
  CHECK(tok.encode("中") == tokens{410, 0xE4 + 3, 0xB8 + 3, 0xAD + 3});
  CHECK(tok.encode("😀") == tokens{410, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3});
  CHECK(tok.encode("x\ny") == tokens{410, 444, 0x0A + 3, 422});
  // Multi-byte characters that have pieces (curly quotes, é) are single tokens; ï is not.
  CHECK(tok.encode("“Hi,” said Tom’s mom.") ==
        tokens{410, 465, 440, 417, 432, 466, 336, 274, 287, 468, 419, 357, 426});
  CHECK(tok.encode("café naïve") == tokens{280, 412, 431, 485, 297, 412, 0xC3 + 3, 0xAF + 3, 360});
}

TEST_CASE("tok512 decodes like llama2.c and round-trips the TinyStories text", "[runner][real]") {
  const llama::tokenizer& tok = runner_test::tok512();
  // The reference greedy run decodes to llama2.c's expected output, byte for byte.
  const std::string story = tok.decode(runner_test::reference().tokens);
  CHECK(story.size() == 464);
  CHECK(story == llama2c_expected_story);

  // Leading space dropped only right after BOS; byte pieces become raw bytes; BOS/EOS vanish.
  CHECK(tok.decode_piece(1, 403) == "Once");
  CHECK(tok.decode_piece(403, 407) == " upon");
  CHECK(tok.decode_piece(5, 0xE4 + 3) == "\xE4");
  CHECK(tok.decode_piece(5, 1).empty());
  CHECK(tok.decode({1, 410, 0xE4 + 3, 0xB8 + 3, 0xAD + 3, 2}) == "中");
  CHECK_THROWS_AS(tok.decode_piece(1, 512), reparam::error);

  // decode([BOS] + encode(p)) == p and encode(decode(tokens)) == tokens for every paragraph of
  // the valid-head file (4300) and every CS336 story (5), including the mojibake ones.
  const std::string text = llama::read_text_file(runner_test::valid_head_txt);
  std::int64_t paragraphs = 0;
  const std::vector<int> stream = llama::paragraph_stream(tok, text, -1, &paragraphs);
  CHECK(paragraphs == 4300);
  CHECK(stream.size() == 384962);  // README: the full paragraph stream
  std::size_t start = 0;
  std::size_t text_position = 0;  // paragraphs appear in order
  int failures = 0;
  while (start < stream.size()) {
    std::size_t end = start + 1;
    while (end < stream.size() && stream[end] != llama::tokenizer::bos_id) ++end;
    const std::vector<int> tokens(stream.begin() + static_cast<std::ptrdiff_t>(start),
                                  stream.begin() + static_cast<std::ptrdiff_t>(end));
    const std::string paragraph = tok.decode(tokens);
    const std::size_t found = text.find(paragraph, text_position);
    if (tok.encode(paragraph, true) != tokens || found == std::string::npos) ++failures;
    text_position = found == std::string::npos ? text_position : found + paragraph.size();
    start = end;
  }
  CHECK(failures == 0);
  const std::string sample = llama::read_text_file(runner_test::sample_txt);
  for (const auto& tokens : llama::story_sequences(tok, sample)) {
    const std::string decoded = tok.decode(tokens);
    CHECK(sample.find(decoded + "\n<|endoftext|>") != std::string::npos);
    CHECK(tok.encode(decoded, true) == tokens);
  }
}

TEST_CASE("perplexity on tinystories_sample_cs336.txt is 3.548 over 1804 tokens",
          "[runner][real]") {
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  llama::runner r(m);
  const std::string text = llama::read_text_file(runner_test::sample_txt);
  CHECK(llama::story_sequences(runner_test::tok512(), text).size() == 5);
  const llama::perplexity_result p = llama::perplexity_stories(r, runner_test::tok512(), text);
  WARN("stories protocol: " << p.tokens << " tokens, mean NLL " << p.mean_nll << ", ppl " << p.ppl);
  CHECK(p.protocol == "stories");
  CHECK(p.sequences == 5);
  CHECK(p.windows == 5);
  CHECK(p.tokens == 1804);
  CHECK(p.mean_nll == Approx(1.2664).margin(1e-3));
  CHECK(p.ppl == Approx(3.548).margin(ppl_tolerance));
}

TEST_CASE("perplexity on the first 16 windows of tinystories_valid_head.txt is 4.026",
          "[runner][real]") {
  const llama::model m = llama::load_llama2c(runner_test::model_bin);
  llama::runner r(m);
  const std::string text = llama::read_text_file(runner_test::valid_head_txt);
  const llama::perplexity_result p =
      llama::perplexity_paragraph_stream(r, runner_test::tok512(), text, 16);
  WARN("paragraph stream, 16 windows: " << p.tokens << " tokens, mean NLL " << p.mean_nll
                                        << ", ppl " << p.ppl);
  CHECK(p.protocol == "paragraph_stream");
  CHECK(p.windows == 16);
  CHECK(p.tokens == 8192);
  CHECK(p.mean_nll == Approx(1.3928).margin(1e-3));
  CHECK(p.ppl == Approx(4.026).margin(ppl_tolerance));

  // score_windows: the last window is shorter, and max_windows caps the count.
  const std::vector<int> short_stream = {1, 403, 407, 261, 378, 11};
  const llama::nll_total two = llama::score_windows(r, short_stream, 3);
  CHECK(two.windows == 2);
  CHECK(two.tokens == 5);
  const llama::nll_total one = llama::score_windows(r, short_stream, 3, 1);
  CHECK(one.windows == 1);
  CHECK(one.tokens == 3);
  CHECK_THROWS_AS(llama::score_windows(r, short_stream, 513), reparam::error);
}

TEST_CASE("sampling is seeded, reduces to greedy, and stops at BOS", "[runner][real]") {
  llama::model m = llama::load_llama2c(runner_test::model_bin);
  llama::runner r(m);
  const auto& greedy = runner_test::reference().tokens;
  const std::vector<int> bos = {llama::bos_token};
  const std::vector<int> a = llama::generate(r, bos, 100, {1.0f, 0.9f, 7});
  const std::vector<int> b = llama::generate(r, bos, 100, {1.0f, 0.9f, 7});
  const std::vector<int> c = llama::generate(r, bos, 100, {1.0f, 0.9f, 8});
  CHECK(a == b);
  CHECK(a != c);
  CHECK(a.size() <= 101);
  // A nucleus of mass 1e-3 holds only the top token; a tiny temperature sharpens to argmax.
  const std::vector<int> prefix(greedy.begin(), greedy.begin() + 51);
  CHECK(llama::generate(r, bos, 50, {1.0f, 1e-3f, 3}) == prefix);
  CHECK(llama::generate(r, bos, 50, {1e-3f, 0.0f, 3}) == prefix);
  // The prompt is kept and prefilled; generation continues it greedily.
  const std::vector<int> prompt(greedy.begin(), greedy.begin() + 20);
  CHECK(llama::generate(r, prompt, 50, {0.0f, 0.0f, 0}) == prefix);

  // Boost the BOS row of the (tied) classifier so greedy decoding soon predicts BOS: the
  // generation stops there and does not include it.
  m.mutable_token_embedding().row(llama::bos_token) *= 4.0f;
  const std::vector<int> stopped = llama::generate(r, bos, 200, {0.0f, 0.0f, 0});
  CAPTURE(stopped.size());
  CHECK(stopped.size() < 201);
  CHECK(std::count(stopped.begin(), stopped.end(), llama::bos_token) == 1);
}

TEST_CASE("bad tokenizer files give errors naming the file and the entry", "[runner][real]") {
  CHECK_THROWS_WITH(llama::tokenizer::load(runner_test::scratch_path("missing_tok.bin"), 512),
                    Catch::StartsWith("llama::tokenizer::load: cannot open"));
  const std::string good = llama::read_file(runner_test::tokenizer_bin, "test");
  const auto load_bytes = [](const std::string& name, const std::string& bytes, int vocab) {
    const std::string path = runner_test::scratch_path(name);
    runner_test::write_bytes(path, bytes);
    return llama::tokenizer::load(path, vocab);
  };
  CHECK_THROWS_WITH(load_bytes("tok_truncated.bin", good.substr(0, 3000), 512),
                    Catch::Contains("truncated reading"));
  CHECK_THROWS_WITH(load_bytes("tok_vocab.bin", good, 511),
                    Catch::Contains("trailing bytes after 511 entries"));
  CHECK_THROWS_WITH(load_bytes("tok_vocab.bin", good, 513), Catch::Contains("entry 512"));
  std::string bad_length = good;
  const std::int32_t huge = 1000;
  std::memcpy(bad_length.data() + 4 + 4, &huge, sizeof(huge));  // entry 0's length
  CHECK_THROWS_WITH(load_bytes("tok_length.bin", bad_length, 512),
                    Catch::Contains("entry 0 has length 1000"));
  CHECK_THROWS_AS(llama::tokenizer::load(runner_test::tokenizer_bin, 0), reparam::error);
}
