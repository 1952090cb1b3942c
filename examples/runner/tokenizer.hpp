// SPDX-License-Identifier: Apache-2.0
// llama2.c's tokenizer (tok512.bin): SentencePiece-style BPE with byte fallback. Encoding follows
// llama2.c's encode() exactly (dummy-prefix space, code point lookup, byte fallback, repeated
// best-score pair merges, leftmost on ties); decoding follows its decode() and skips control
// tokens.
#ifndef REPARAM_EXAMPLES_RUNNER_TOKENIZER_HPP
#define REPARAM_EXAMPLES_RUNNER_TOKENIZER_HPP

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llama {

class tokenizer {
 public:
  static constexpr int unk_id = 0;
  static constexpr int bos_id = 1;
  static constexpr int eos_id = 2;
  static constexpr int byte_fallback_offset = 3;  // id of <0x00>

  /// Reads `vocab_size` entries (the file does not store the count; it comes from the model) and
  /// requires the file to end right after them. Throws reparam::io_error naming the file, entry
  /// and values on a missing, truncated or malformed file.
  static tokenizer load(const std::string& path, int vocab_size);

  tokenizer(const tokenizer& other);
  tokenizer& operator=(const tokenizer& other);
  tokenizer(tokenizer&& other) noexcept;
  tokenizer& operator=(tokenizer&& other) noexcept;
  ~tokenizer() = default;

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  int max_token_length() const { return max_token_length_; }
  const std::string& piece(int id) const;
  float score(int id) const;
  /// Id of the piece spelled exactly `text`, or -1.
  int lookup(std::string_view text) const;

  /// Encodes `text` (UTF-8; other bytes fall back to byte pieces). Empty text gives no tokens
  /// (plus BOS/EOS if asked). Merges run word by word when no piece has a space after its first
  /// byte (checked at load), which gives the same result as llama2.c's whole-text loop: a merge
  /// across a word boundary would create such a piece. Allocates the output only.
  std::vector<int> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const;

  /// The text of `token` following `previous` (llama2.c decode): a leading space is dropped
  /// after BOS and <0xNN> pieces become the raw byte. BOS and EOS decode to nothing.
  std::string_view decode_piece(int previous, int token) const;
  /// Concatenated decode_piece over the sequence (previous = -1 for the first token).
  std::string decode(const std::vector<int>& tokens) const;

 private:
  tokenizer() = default;
  void build_index();
  void merge(std::vector<int>& tokens) const;
  void check_id(int id, const char* function) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<char> byte_of_piece_;  // raw byte for <0xNN> pieces
  std::vector<bool> is_byte_piece_;
  std::unordered_map<std::string_view, int> index_;  // views into pieces_
  int max_token_length_ = 0;
  bool is_word_separable_ = false;  // no piece has ' ' after its first byte
};

}  // namespace llama

#endif  // REPARAM_EXAMPLES_RUNNER_TOKENIZER_HPP
