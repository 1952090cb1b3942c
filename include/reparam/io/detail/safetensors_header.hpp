// SPDX-License-Identifier: Apache-2.0
// The JSON header of a safetensors file, read with nlohmann::json's SAX interface and checked
// against the schema as it streams: the first violation stops the parse, so a hostile header
// costs no more memory than the valid part before the error. Used by io/safetensors.hpp. Not API.
#ifndef REPARAM_IO_DETAIL_SAFETENSORS_HEADER_HPP
#define REPARAM_IO_DETAIL_SAFETENSORS_HEADER_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <reparam/core/error.hpp>

namespace reparam::io::detail {

/// The safetensors specification's limit on the JSON header (the official reader's
/// MAX_HEADER_SIZE).
inline constexpr std::size_t max_header_bytes = 100'000'000;

/// `text` quoted with single quotes, cut to `max_chars` bytes (then "...") so that error messages
/// about hostile names stay short.
inline std::string excerpt(std::string_view text, std::size_t max_chars = 80) {
  if (text.size() <= max_chars) {
    return reparam::detail::concat('\'', text, '\'');
  }
  return reparam::detail::concat('\'', text.substr(0, max_chars), "...' (", text.size(), " bytes)");
}

/// "[2, 3, 4]".
template <class Dim>
std::string format_shape(const std::vector<Dim>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  }
  return text + "]";
}

/// One tensor entry as written in the header: the schema holds (types, keys), nothing is
/// interpreted yet (dtype name, sizes and offsets are checked by the caller).
struct raw_tensor_entry {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t data_begin = 0;
  std::uint64_t data_end = 0;
};

struct raw_header {
  std::vector<raw_tensor_entry> tensors;  // in header order
  std::map<std::string, std::string> metadata;
};

/// Schema of the header, enforced event by event:
///   { "<name>": {"dtype": string, "shape": [uint...], "data_offsets": [uint, uint]}, ...,
///     "__metadata__": {"<key>": string, ...} }
/// Each entry has exactly those three keys; no key is repeated at any level.
class header_sax final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit header_sax(raw_header* out) : out_(out) {}

  /// The first problem found, or empty.
  const std::string& error() const noexcept { return error_; }

  bool null() override { return unexpected("null"); }
  bool boolean(bool /*value*/) override { return unexpected("a boolean"); }
  bool binary(binary_t& /*value*/) override { return unexpected("binary data"); }

  bool number_unsigned(number_unsigned_t value) override { return element(value, "a number"); }

  bool number_integer(number_integer_t value) override {
    // nlohmann reports only negative numbers (and "-0") as signed integers.
    if (value >= 0) {
      return element(static_cast<std::uint64_t>(value), "a number");
    }
    if (state_ == state::shape || state_ == state::offsets) {
      return fail(element_context(), " is negative (", value, ")");
    }
    return unexpected("a number");
  }

  bool number_float(number_float_t /*value*/, const string_t& text) override {
    if (state_ == state::shape || state_ == state::offsets) {
      return fail(element_context(), " is ", excerpt(text, 40), ", not an integer");
    }
    return unexpected("a number");
  }

  bool string(string_t& value) override {
    if (state_ == state::entry && field_ == field::dtype) {
      entry_.dtype = std::move(value);
      return true;
    }
    if (state_ == state::metadata) {
      out_->metadata.emplace(std::move(key_), std::move(value));
      return true;
    }
    return unexpected("a string");
  }

  bool start_object(std::size_t /*elements*/) override {
    if (state_ == state::start) {
      state_ = state::top;
      return true;
    }
    if (state_ == state::top) {
      if (key_ == metadata_key) {
        state_ = state::metadata;
        return true;
      }
      state_ = state::entry;
      entry_ = raw_tensor_entry{};
      entry_.name = std::move(key_);
      seen_ = {};
      return true;
    }
    return unexpected("an object");
  }

  bool key(string_t& name) override {
    if (state_ == state::top) {
      if (!top_keys_.insert(name).second) {
        return fail("duplicate top-level key ", excerpt(name));
      }
    } else if (state_ == state::metadata) {
      if (out_->metadata.count(name) != 0) {
        return fail("__metadata__ has duplicate key ", excerpt(name));
      }
    } else {  // state::entry
      if (name == "dtype") {
        field_ = field::dtype;
      } else if (name == "shape") {
        field_ = field::shape;
      } else if (name == "data_offsets") {
        field_ = field::data_offsets;
      } else {
        return fail("tensor ", excerpt(entry_.name), ": unexpected key ", excerpt(name),
                    " (an entry has exactly dtype, shape and data_offsets)");
      }
      const auto slot = static_cast<std::size_t>(field_);
      if (seen_[slot]) {
        return fail("tensor ", excerpt(entry_.name), ": duplicate key ", excerpt(name));
      }
      seen_[slot] = true;
    }
    key_ = std::move(name);
    return true;
  }

  bool end_object() override {
    if (state_ == state::entry) {
      static constexpr const char* names[] = {"dtype", "shape", "data_offsets"};
      for (std::size_t slot = 0; slot < 3; ++slot) {
        if (!seen_[slot]) {
          return fail("tensor ", excerpt(entry_.name), ": missing key '", names[slot], "'");
        }
      }
      out_->tensors.push_back(std::move(entry_));
      state_ = state::top;
    } else if (state_ == state::metadata) {
      state_ = state::top;
    } else {
      state_ = state::done;
    }
    return true;
  }

  bool start_array(std::size_t /*elements*/) override {
    if (state_ == state::entry && field_ == field::shape) {
      state_ = state::shape;
      return true;
    }
    if (state_ == state::entry && field_ == field::data_offsets) {
      state_ = state::offsets;
      offsets_count_ = 0;
      return true;
    }
    return unexpected("an array");
  }

  bool end_array() override {
    if (state_ == state::offsets && offsets_count_ != 2) {
      return fail("tensor ", excerpt(entry_.name), ": data_offsets has ", offsets_count_,
                  " elements, expected 2 ([begin, end])");
    }
    state_ = state::entry;
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& problem) override {
    // what() quotes the last token read, which for an unterminated string is the rest of the
    // header: keep the message short.
    const std::string_view what = problem.what();
    constexpr std::size_t max_chars = 240;
    return fail("header is not valid UTF-8 JSON: ", what.substr(0, max_chars),
                what.size() > max_chars ? "..." : "");
  }

 private:
  enum class state { start, top, entry, metadata, shape, offsets, done };
  enum class field : std::size_t { dtype, shape, data_offsets };
  static constexpr const char* metadata_key = "__metadata__";

  template <class... Parts>
  bool fail(const Parts&... parts) {
    if (error_.empty()) {
      error_ = reparam::detail::concat(parts...);
    }
    return false;
  }

  // "tensor 'w': shape element 2" / "tensor 'w': data_offsets element 0"
  std::string element_context() const {
    const bool in_shape = state_ == state::shape;
    return reparam::detail::concat("tensor ", excerpt(entry_.name), ": ",
                                   in_shape ? "shape" : "data_offsets", " element ",
                                   in_shape ? entry_.shape.size() : offsets_count_);
  }

  // A non-negative integer: a shape dim or an offset. Anywhere else it is a type error.
  bool element(std::uint64_t value, const char* kind) {
    if (state_ == state::shape) {
      entry_.shape.push_back(value);
      return true;
    }
    if (state_ == state::offsets) {
      if (offsets_count_ >= 2) {
        return fail("tensor ", excerpt(entry_.name),
                    ": data_offsets has more than 2 elements, expected [begin, end]");
      }
      (offsets_count_ == 0 ? entry_.data_begin : entry_.data_end) = value;
      ++offsets_count_;
      return true;
    }
    return unexpected(kind);
  }

  // A value of the wrong JSON type for where it appears.
  bool unexpected(const char* found) {
    switch (state_) {
      case state::start:
        return fail("header is ", found, ", expected a JSON object");
      case state::top:
        if (key_ == metadata_key) {
          return fail("__metadata__ is ", found, ", expected an object of string values");
        }
        return fail("tensor ", excerpt(key_), " is ", found,
                    ", expected an object with dtype, shape and data_offsets");
      case state::metadata:
        return fail("__metadata__ value of key ", excerpt(key_), " is ", found,
                    ", expected a string (metadata maps strings to strings)");
      case state::entry:
        if (field_ == field::dtype) {
          return fail("tensor ", excerpt(entry_.name), ": dtype is ", found,
                      ", expected a string such as \"F32\"");
        }
        return fail("tensor ", excerpt(entry_.name), ": ",
                    field_ == field::shape ? "shape" : "data_offsets", " is ", found,
                    ", expected an array of non-negative integers");
      case state::shape:
      case state::offsets:
        return fail(element_context(), " is ", found, ", expected a non-negative integer");
      case state::done:
        break;
    }
    return fail("unexpected ", found, " after the header object");
  }

  raw_header* out_;
  std::string error_;
  state state_ = state::start;
  field field_ = field::dtype;
  std::string key_;  // the last key read at the top level or in __metadata__
  std::set<std::string> top_keys_;
  raw_tensor_entry entry_;
  std::array<bool, 3> seen_{};
  std::size_t offsets_count_ = 0;
};

/// Parses the header text [first, last) into `out`. Returns an empty string on success, or a
/// description of the first problem. Allocates; no exceptions of its own.
inline std::string parse_header_json(const char* first, const char* last, raw_header* out) {
  header_sax handler(out);
  const bool is_ok = nlohmann::json::sax_parse(first, last, &handler);
  if (is_ok && handler.error().empty()) {
    return {};
  }
  return handler.error().empty() ? std::string("header is not valid JSON") : handler.error();
}

}  // namespace reparam::io::detail

#endif  // REPARAM_IO_DETAIL_SAFETENSORS_HEADER_HPP
