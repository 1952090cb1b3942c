// SPDX-License-Identifier: Apache-2.0
// A minimal command-line parser shared by the examples: "--name value", "--name=value" and
// boolean flags, generated --help text, and exit code 2 with a message on anything unknown.
#ifndef REPARAM_EXAMPLES_COMMON_CLI_HPP
#define REPARAM_EXAMPLES_COMMON_CLI_HPP

#include <algorithm>
#include <functional>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace examples {

class cli {
 public:
  /// parse() returns this when the program should go on; otherwise the exit code.
  static constexpr int proceed = -1;

  cli(std::string program, std::string description)
      : program_(std::move(program)), description_(std::move(description)) {}

  void add_flag(const std::string& name, bool* target, const std::string& help) {
    options_.push_back({name, "", help, "", [target](const std::string&) {
                          *target = true;
                          return true;
                        }});
  }

  /// An option with a value, parsed with operator>> into `target`, whose current value is shown
  /// as the default in --help.
  template <class T>
  void add_option(const std::string& name, T* target, const std::string& value_name,
                  const std::string& help) {
    std::ostringstream current;
    current << *target;
    options_.push_back({name, value_name, help, current.str(), [target](const std::string& text) {
                          if constexpr (std::is_same_v<T, std::string>) {
                            *target = text;
                            return true;
                          } else {
                            std::istringstream in(text);
                            T value{};
                            in >> value;
                            if (in.fail() || !in.eof()) return false;
                            *target = value;
                            return true;
                          }
                        }});
  }

  void print_usage(std::ostream& out) const {
    out << "usage: " << program_ << " [options]\n" << description_ << "\n\noptions:\n";
    std::size_t width = 6;  // "--help"
    for (const auto& o : options_) width = std::max(width, label(o).size());
    for (const auto& o : options_) {
      const std::string text = label(o);
      out << "  " << text << std::string(width - text.size() + 2, ' ') << o.help;
      if (!o.default_text.empty()) out << " (default: " << o.default_text << ")";
      out << '\n';
    }
    out << "  --help" << std::string(width - 6 + 2, ' ') << "print this help and exit\n";
  }

  /// Parses argv[1..argc). Prints usage and returns 0 on --help; prints an error to `err` and
  /// returns 2 on an unknown option, a missing or malformed value; otherwise returns proceed.
  int parse(int argc, const char* const* argv, std::ostream& out, std::ostream& err) const {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_usage(out);
        return 0;
      }
      std::string value;
      bool has_value = false;
      if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg.resize(eq);
        has_value = true;
      }
      const option* match = nullptr;
      for (const auto& o : options_) match = o.name == arg ? &o : match;
      if (match == nullptr) {
        err << program_ << ": unknown option '" << arg << "' (see --help)\n";
        return 2;
      }
      if (!match->value_name.empty() && !has_value) {
        if (i + 1 >= argc) {
          err << program_ << ": option " << arg << " needs a value " << match->value_name << '\n';
          return 2;
        }
        value = argv[++i];
        has_value = true;
      }
      if (match->value_name.empty() && has_value) {
        err << program_ << ": flag " << arg << " takes no value\n";
        return 2;
      }
      if (!match->set(value)) {
        err << program_ << ": bad value '" << value << "' for " << arg << '\n';
        return 2;
      }
    }
    return proceed;
  }

 private:
  struct option {
    std::string name;
    std::string value_name;  // empty for a flag
    std::string help;
    std::string default_text;
    std::function<bool(const std::string&)> set;
  };

  static std::string label(const option& o) {
    return o.value_name.empty() ? o.name : o.name + " " + o.value_name;
  }

  std::string program_;
  std::string description_;
  std::vector<option> options_;
};

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_CLI_HPP
