// SPDX-License-Identifier: Apache-2.0
// Build switches and assertion macros. Every macro here can be defined by the user before the
// first reparam include to override the default.
#ifndef REPARAM_CONFIG_HPP
#define REPARAM_CONFIG_HPP

#include <cassert>

/// Exceptions are used for the error policy unless the compiler has them switched off
/// (-fno-exceptions) or the user defines REPARAM_NO_EXCEPTIONS. Without exceptions a failed
/// check prints its message to stderr and aborts.
#if !defined(REPARAM_NO_EXCEPTIONS)
#if !(defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND))
#define REPARAM_NO_EXCEPTIONS 1
#endif
#endif

/// Internal invariant checks: active in debug builds only, never used for argument validation
/// (that is the job of reparam::detail::check, which is always on).
#ifndef REPARAM_DEBUG_ASSERT
#define REPARAM_DEBUG_ASSERT(cond) assert(cond)
#endif

/// Pointer aliasing promise for kernels.
#ifndef REPARAM_RESTRICT
#if defined(__GNUC__) || defined(__clang__)
#define REPARAM_RESTRICT __restrict__
#else
#define REPARAM_RESTRICT
#endif
#endif

#endif  // REPARAM_CONFIG_HPP
