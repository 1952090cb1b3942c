// SPDX-License-Identifier: Apache-2.0
// tok512.bin loading with full validation, and llama2.c-exact BPE encode/decode.
#include "runner/tokenizer.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include <reparam/core/error.hpp>

#include "runner/model.hpp"

namespace llama {

namespace {

// llama2.c's initial best score; every real piece scores higher.
constexpr float no_merge_score = -1e10f;

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0u) == 0x80u; }

}  // namespace

tokenizer tokenizer::load(const std::string& path, int vocab_size) {
  constexpr const char* function = "llama::tokenizer::load";
  reparam::detail::check(vocab_size > 0, function, "vocab_size ", vocab_size, " must be > 0");
  const std::string bytes = read_file(path, function);

  std::size_t offset = 0;
  const auto read = [&](void* out, std::size_t count, const char* what, int entry) {
    reparam::detail::check_io(offset + count <= bytes.size(), function, "'", path,
                              "': truncated reading ", what, " of entry ", entry, " at byte ",
                              offset, " (file has ", bytes.size(), " bytes)");
    std::memcpy(out, bytes.data() + offset, count);
    offset += count;
  };

  tokenizer t;
  std::int32_t max_length = 0;
  read(&max_length, sizeof(max_length), "max_token_length", -1);
  reparam::detail::check_io(max_length > 0 && max_length <= 4096, function, "'", path,
                            "': max_token_length ", max_length, " out of range [1, 4096]");
  t.max_token_length_ = max_length;
  t.pieces_.reserve(static_cast<std::size_t>(vocab_size));
  t.scores_.reserve(static_cast<std::size_t>(vocab_size));
  for (int id = 0; id < vocab_size; ++id) {
    float score = 0.0f;
    std::int32_t length = 0;
    read(&score, sizeof(score), "score", id);
    read(&length, sizeof(length), "length", id);
    reparam::detail::check_io(std::isfinite(score), function, "'", path, "': entry ", id,
                              " has non-finite score ", score);
    reparam::detail::check_io(length > 0 && length <= max_length, function, "'", path, "': entry ",
                              id, " has length ", length, ", outside [1, max_token_length ",
                              max_length, "]");
    std::string piece(static_cast<std::size_t>(length), '\0');
    read(piece.data(), piece.size(), "bytes", id);
    t.pieces_.push_back(std::move(piece));
    t.scores_.push_back(score);
  }
  reparam::detail::check_io(offset == bytes.size(), function, "'", path, "' has ",
                            bytes.size() - offset, " trailing bytes after ", vocab_size,
                            " entries; wrong vocab_size?");
  t.build_index();
  return t;
}

void tokenizer::build_index() {
  index_.clear();
  index_.reserve(pieces_.size());
  byte_of_piece_.assign(pieces_.size(), '\0');
  is_byte_piece_.assign(pieces_.size(), false);
  is_word_separable_ = true;
  for (std::size_t id = 0; id < pieces_.size(); ++id) {
    const std::string& p = pieces_[id];
    // llama2.c looks pieces up by binary search over a sorted copy, so with duplicates any of
    // them may win; keep the first, which is deterministic.
    index_.emplace(std::string_view(p), static_cast<int>(id));
    if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && hex_digit(p[3]) >= 0 &&
        hex_digit(p[4]) >= 0) {
      is_byte_piece_[id] = true;
      byte_of_piece_[id] = static_cast<char>(hex_digit(p[3]) * 16 + hex_digit(p[4]));
    }
    if (p.find(' ', 1) != std::string::npos) is_word_separable_ = false;
  }
  // The word-by-word shortcut also needs ' ' itself to be a piece: a byte-fallback <0x20> token
  // does not start with a space, so merges across it would not be ruled out.
  if (lookup(" ") == -1) is_word_separable_ = false;
}

tokenizer::tokenizer(const tokenizer& other)
    : pieces_(other.pieces_), scores_(other.scores_), max_token_length_(other.max_token_length_) {
  build_index();  // the index views this object's own strings
}

tokenizer& tokenizer::operator=(const tokenizer& other) {
  if (this != &other) {
    pieces_ = other.pieces_;
    scores_ = other.scores_;
    max_token_length_ = other.max_token_length_;
    build_index();
  }
  return *this;
}

// Moving the vector keeps its heap buffer, so the string_views in the moved index stay valid.
tokenizer::tokenizer(tokenizer&& other) noexcept = default;
tokenizer& tokenizer::operator=(tokenizer&& other) noexcept = default;

void tokenizer::check_id(int id, const char* function) const {
  reparam::detail::check(id >= 0 && id < vocab_size(), function, "token id ", id,
                         " out of range [0, ", vocab_size(), ")");
}

const std::string& tokenizer::piece(int id) const {
  check_id(id, "llama::tokenizer::piece");
  return pieces_[static_cast<std::size_t>(id)];
}

float tokenizer::score(int id) const {
  check_id(id, "llama::tokenizer::score");
  return scores_[static_cast<std::size_t>(id)];
}

int tokenizer::lookup(std::string_view text) const {
  const auto it = index_.find(text);
  return it == index_.end() ? -1 : it->second;
}

void tokenizer::merge(std::vector<int>& tokens) const {
  std::string pair;
  pair.reserve(2 * static_cast<std::size_t>(max_token_length_));
  for (;;) {
    float best_score = no_merge_score;
    int best_id = -1;
    std::size_t best_index = 0;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      const std::string& a = pieces_[static_cast<std::size_t>(tokens[i])];
      const std::string& b = pieces_[static_cast<std::size_t>(tokens[i + 1])];
      if (a.size() + b.size() > static_cast<std::size_t>(max_token_length_)) continue;
      pair.assign(a).append(b);
      const int id = lookup(pair);
      // Strictly greater: the leftmost pair wins ties, as in llama2.c.
      if (id != -1 && scores_[static_cast<std::size_t>(id)] > best_score) {
        best_score = scores_[static_cast<std::size_t>(id)];
        best_id = id;
        best_index = i;
      }
    }
    if (best_id == -1) return;
    tokens[best_index] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
  }
}

std::vector<int> tokenizer::encode(std::string_view text, bool add_bos, bool add_eos) const {
  std::vector<int> out;
  out.reserve(text.size() + 3);
  if (add_bos) out.push_back(bos_id);

  std::vector<int> word;  // tokens since the last word boundary, merged as a unit
  const auto flush = [&] {
    merge(word);
    out.insert(out.end(), word.begin(), word.end());
    word.clear();
  };
  const auto push_code_point = [&](std::string_view code_point) {
    if (is_word_separable_ && code_point == " " && !word.empty()) flush();
    const int id = lookup(code_point);
    if (id != -1) {
      word.push_back(id);
      return;
    }
    for (const char byte : code_point) {
      word.push_back(static_cast<unsigned char>(byte) + byte_fallback_offset);
    }
  };

  if (!text.empty()) {
    // SentencePiece's add_dummy_prefix: the text starts as if after a space.
    push_code_point(" ");
    // Group bytes into code points as llama2.c does: a non-continuation byte starts a new one,
    // and at most 4 bytes go together (invalid UTF-8 therefore falls back byte-group-wise).
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t end = start + 1;
      while (end < text.size() && is_continuation_byte(text[end]) && end - start < 4) ++end;
      push_code_point(text.substr(start, end - start));
      start = end;
    }
    flush();
  }
  if (add_eos) out.push_back(eos_id);
  return out;
}

std::string_view tokenizer::decode_piece(int previous, int token) const {
  check_id(token, "llama::tokenizer::decode_piece");
  if (token == bos_id || token == eos_id) return {};
  const auto id = static_cast<std::size_t>(token);
  if (is_byte_piece_[id]) return {&byte_of_piece_[id], 1};
  std::string_view text = pieces_[id];
  // After BOS the SentencePiece dummy-prefix space is dropped.
  if (previous == bos_id && !text.empty() && text.front() == ' ') text.remove_prefix(1);
  return text;
}

std::string tokenizer::decode(const std::vector<int>& tokens) const {
  std::string text;
  int previous = -1;
  for (const int token : tokens) {
    text.append(decode_piece(previous, token));
    previous = token;
  }
  return text;
}

}  // namespace llama
