// SPDX-License-Identifier: Apache-2.0
// The results table every example fills: a list of records with named fields (strings, integers,
// doubles), printed as aligned text tables per section and written as a JSON list of objects.
#ifndef REPARAM_EXAMPLES_COMMON_RESULTS_HPP
#define REPARAM_EXAMPLES_COMMON_RESULTS_HPP

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <reparam/core/error.hpp>

namespace examples {

/// One result: a JSON object whose fields keep their insertion order, e.g.
/// {"section": "baseline", "metric": "ppl", "data": "...", "tokens": 1804, "ppl": 3.548}.
using record = nlohmann::ordered_json;

/// A field value as table text: strings verbatim, integers exactly, doubles with 6 significant
/// digits (enough for a perplexity to 4 decimals), booleans as yes/no.
inline std::string format_value(const record& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_float()) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.6g", value.get<double>());
    return buffer;
  }
  if (value.is_boolean()) return value.get<bool>() ? "yes" : "no";
  if (value.is_null()) return "";
  return value.dump();
}

class results {
 public:
  /// Appends a record; it must be a JSON object (throws reparam::error otherwise).
  void add(record r) {
    reparam::detail::check(r.is_object(), "examples::results::add",
                           "a record must be a JSON object, got ", r.type_name());
    records_.push_back(std::move(r));
  }

  const std::vector<record>& records() const { return records_; }

  /// Prints the records whose "section" equals `section` (every record if empty) as one aligned
  /// table: a column per field name in order of first appearance ("section" is left out when
  /// filtering), numbers right-aligned, missing fields blank.
  void print(std::ostream& out, std::string_view section = {}) const {
    std::vector<const record*> rows;
    std::vector<std::string> columns;
    for (const record& r : records_) {
      if (!section.empty() && (!r.contains("section") || r["section"] != section)) continue;
      rows.push_back(&r);
      for (const auto& field : r.items()) {
        if (!section.empty() && field.key() == "section") continue;
        bool known = false;
        for (const auto& c : columns) known = known || c == field.key();
        if (!known) columns.push_back(field.key());
      }
    }
    if (rows.empty()) return;
    std::vector<std::size_t> widths;
    for (const auto& c : columns) {
      std::size_t width = c.size();
      for (const record* r : rows) {
        if (r->contains(c)) width = std::max(width, format_value((*r)[c]).size());
      }
      widths.push_back(width);
    }
    // Cells are padded to their column width; trailing blanks are trimmed per line.
    const auto emit = [&](std::string line) {
      line.erase(line.find_last_not_of(' ') + 1);
      out << line << '\n';
    };
    const auto cell = [&](const std::string& text, std::size_t i, bool right) {
      const std::string pad(widths[i] - text.size(), ' ');
      return (i == 0 ? "" : "  ") + (right ? pad + text : text + pad);
    };
    std::string header, rule;
    for (std::size_t i = 0; i < columns.size(); ++i) {
      header += cell(columns[i], i, false);
      rule += cell(std::string(widths[i], '-'), i, false);
    }
    emit(header);
    emit(rule);
    for (const record* r : rows) {
      std::string line;
      for (std::size_t i = 0; i < columns.size(); ++i) {
        const bool has = r->contains(columns[i]);
        line +=
            cell(has ? format_value((*r)[columns[i]]) : "", i, has && (*r)[columns[i]].is_number());
      }
      emit(line);
    }
  }

  /// Writes every record as a JSON array of objects (2-space indent). Throws reparam::io_error.
  void write_json(const std::string& path) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    reparam::detail::check_io(out.is_open(), "examples::results::write_json", "cannot open '", path,
                              "' for writing");
    out << record(records_).dump(2) << '\n';
    out.close();
    reparam::detail::check_io(!out.fail(), "examples::results::write_json", "write to '", path,
                              "' failed");
  }

 private:
  std::vector<record> records_;
};

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_RESULTS_HPP
