// SPDX-License-Identifier: Apache-2.0
// The one error policy (STYLE.md section 4): every public entry point validates its arguments and
// reports a failure as reparam::error (bad arguments) or reparam::io_error (bad files), with a
// message naming the function, the argument and the offending values. Built without exceptions,
// the same check prints that message to stderr and aborts.
#ifndef REPARAM_CORE_ERROR_HPP
#define REPARAM_CORE_ERROR_HPP

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>

namespace reparam {

/// Invalid argument to a reparam function: wrong shape, out-of-range parameter, non-finite value.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A file that cannot be read or written: I/O failure, truncation, malformed or hostile content.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Concatenates streamable parts into one message ("function: argument values").
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <class Error>
[[noreturn]] inline void raise(std::string message) {
#if defined(REPARAM_NO_EXCEPTIONS)
  std::fprintf(stderr, "reparam: %s\n", message.c_str());
  std::abort();
#else
  throw Error(std::move(message));
#endif
}

/// Throws reparam::error("<function>: <parts...>") unless `condition` holds.
template <class... Parts>
inline void check(bool condition, const char* function, const Parts&... parts) {
  if (!condition) {
    raise<error>(concat(function, ": ", parts...));
  }
}

/// Throws reparam::io_error("<function>: <parts...>") unless `condition` holds.
template <class... Parts>
inline void check_io(bool condition, const char* function, const Parts&... parts) {
  if (!condition) {
    raise<io_error>(concat(function, ": ", parts...));
  }
}

/// Checks that every one of `count` values is finite; names the first offender and its position.
template <class Scalar>
inline void check_finite(const char* function, const char* argument, const Scalar* data,
                         index count) {
  for (index i = 0; i < count; ++i) {
    if (!std::isfinite(data[i])) {
      raise<error>(concat(function, ": ", argument, " has non-finite value ", data[i],
                          " at flat index ", i));
    }
  }
}

}  // namespace detail
}  // namespace reparam

#endif  // REPARAM_CORE_ERROR_HPP
