// SPDX-License-Identifier: Apache-2.0
// Counts global operator new calls, for the tests that prove a hot path does not allocate (Eigen's
// own allocations go through malloc: catch those with EIGEN_RUNTIME_NO_MALLOC). Include it in
// exactly ONE translation unit of a test binary: it replaces the global operator new and delete.
#ifndef REPARAM_TESTS_SUPPORT_COUNT_ALLOCATIONS_HPP
#define REPARAM_TESTS_SUPPORT_COUNT_ALLOCATIONS_HPP

#include <atomic>
#include <cstdlib>
#include <new>

// GCC 12 takes the free() in a replaced operator delete for a mismatch with the builtin operator
// new it inlined; the pairs below are consistent.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace reparam::test {

/// Global operator new calls so far (all forms, aligned included).
inline std::atomic<long> allocation_counter{0};

inline long allocations() { return allocation_counter.load(std::memory_order_relaxed); }

namespace detail {

inline void* counted_malloc(std::size_t size) noexcept {
  allocation_counter.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size == 0 ? 1 : size);
}

inline void* counted_aligned(std::size_t size, std::align_val_t align) noexcept {
  allocation_counter.fetch_add(1, std::memory_order_relaxed);
  const auto alignment = static_cast<std::size_t>(align);
  const std::size_t rounded = (size + alignment - 1) / alignment * alignment;
  return std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded);
}

inline void* or_throw(void* p) {
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  return p;
}

}  // namespace detail
}  // namespace reparam::test

// Every replaceable form, so that allocation and deallocation always pair up.
void* operator new(std::size_t size) {
  return reparam::test::detail::or_throw(reparam::test::detail::counted_malloc(size));
}
void* operator new[](std::size_t size) {
  return reparam::test::detail::or_throw(reparam::test::detail::counted_malloc(size));
}
void* operator new(std::size_t size, const std::nothrow_t& /*tag*/) noexcept {
  return reparam::test::detail::counted_malloc(size);
}
void* operator new[](std::size_t size, const std::nothrow_t& /*tag*/) noexcept {
  return reparam::test::detail::counted_malloc(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return reparam::test::detail::or_throw(reparam::test::detail::counted_aligned(size, align));
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return reparam::test::detail::or_throw(reparam::test::detail::counted_aligned(size, align));
}
void* operator new(std::size_t size, std::align_val_t align,
                   const std::nothrow_t& /*tag*/) noexcept {
  return reparam::test::detail::counted_aligned(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align,
                     const std::nothrow_t& /*tag*/) noexcept {
  return reparam::test::detail::counted_aligned(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*size*/) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t /*size*/) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*size*/, std::align_val_t /*align*/) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t /*size*/, std::align_val_t /*align*/) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t /*align*/, const std::nothrow_t& /*tag*/) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t /*align*/,
                       const std::nothrow_t& /*tag*/) noexcept {
  std::free(p);
}

#endif  // REPARAM_TESTS_SUPPORT_COUNT_ALLOCATIONS_HPP
