// SPDX-License-Identifier: Apache-2.0
// Caller-provided scratch memory for hot paths (XNNPACK size-query then setup, ggml wdata):
// an op reports `<op>_workspace_size(shape)` in bytes, the caller owns a buffer of that size, and
// the op carves typed, aligned arrays out of it with no allocation.
#ifndef REPARAM_CORE_WORKSPACE_HPP
#define REPARAM_CORE_WORKSPACE_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <reparam/config.hpp>
#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>

namespace reparam {

/// Every array taken from a workspace starts on this boundary (a cache line, and AVX-512 width).
inline constexpr std::size_t workspace_alignment = 64;

/// Bytes one `take<T>(count)` consumes, including the padding to the next aligned start.
template <class T>
constexpr std::size_t workspace_bytes(index count) noexcept {
  const std::size_t raw = sizeof(T) * static_cast<std::size_t>(count < 0 ? 0 : count);
  return (raw + workspace_alignment - 1) / workspace_alignment * workspace_alignment;
}

/// A non-owning span of scratch bytes with a bump pointer. Cheap to copy; each copy bumps
/// independently, so give every thread its own span (e.g. one slice of a buffer per thread).
class workspace {
 public:
  workspace() noexcept = default;
  /// `data` must be aligned to workspace_alignment.
  workspace(void* data, std::size_t size_bytes) noexcept
      : data_(static_cast<std::byte*>(data)), size_(size_bytes) {
    REPARAM_DEBUG_ASSERT(reinterpret_cast<std::uintptr_t>(data) % workspace_alignment == 0);
  }

  std::size_t size() const noexcept { return size_; }
  std::size_t used() const noexcept { return used_; }
  std::size_t remaining() const noexcept { return size_ - used_; }

  /// Takes an aligned array of `count` T. The caller guarantees capacity (checked once at the
  /// public entry point against `<op>_workspace_size`); Debug builds assert it.
  template <class T>
  T* take(index count) noexcept {
    static_assert(std::is_trivially_destructible_v<T>, "workspace holds trivial types only");
    const std::size_t bytes = workspace_bytes<T>(count);
    REPARAM_DEBUG_ASSERT(bytes <= remaining());
    T* out = reinterpret_cast<T*>(data_ + used_);
    used_ += bytes;
    return out;
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t used_ = 0;
};

/// Owning, aligned buffer (allocates once; use offline or at setup, not per call). With
/// `prefer_huge_pages`, a buffer of at least 2 MiB is 2 MiB aligned and, on Linux, advised to use
/// transparent huge pages (madvise MADV_HUGEPAGE) before it is first touched: long-lived weights
/// streamed by the kernels then cost fewer TLB misses (a plain sequential read of 1 GiB runs
/// ~35% faster on the development machine, where THP is in "madvise" mode). The advice is a
/// hint; the buffer works the same without it.
class workspace_buffer {
 public:
  workspace_buffer() = default;
  explicit workspace_buffer(std::size_t size_bytes, bool prefer_huge_pages = false)
      : data_(nullptr, aligned_delete{alignment_for(size_bytes, prefer_huge_pages)}),
        size_(size_bytes) {
    if (size_bytes == 0) {
      return;
    }
    const std::size_t alignment = data_.get_deleter().alignment;
    data_.reset(static_cast<std::byte*>(
        ::operator new[](round_up(size_bytes, alignment), std::align_val_t{alignment})));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (alignment == huge_page_bytes) {
      // Best effort: an error (no THP support) leaves ordinary pages.
      static_cast<void>(::madvise(data_.get(), round_up(size_bytes, alignment), MADV_HUGEPAGE));
    }
#endif
  }

  std::size_t size() const noexcept { return size_; }
  std::byte* data() noexcept { return data_.get(); }
  const std::byte* data() const noexcept { return data_.get(); }
  /// A fresh workspace over the whole buffer.
  workspace view() noexcept { return {data_.get(), size_}; }

 private:
  static constexpr std::size_t huge_page_bytes = std::size_t{1} << 21;

  static std::size_t alignment_for(std::size_t bytes, bool prefer_huge_pages) noexcept {
    return prefer_huge_pages && bytes >= huge_page_bytes ? huge_page_bytes : workspace_alignment;
  }
  static std::size_t round_up(std::size_t bytes, std::size_t alignment) noexcept {
    return (bytes + alignment - 1) / alignment * alignment;
  }
  struct aligned_delete {
    std::size_t alignment = workspace_alignment;
    void operator()(std::byte* p) const noexcept {
      ::operator delete[](p, std::align_val_t{alignment});
    }
  };
  std::unique_ptr<std::byte[], aligned_delete> data_{nullptr, aligned_delete{}};
  std::size_t size_ = 0;
};

namespace detail {

/// Entry-point check that a caller's workspace is big enough.
inline void check_workspace(const char* function, const workspace& ws, std::size_t required) {
  check(ws.remaining() >= required, function, "workspace has ", ws.remaining(), " bytes left but ",
        required,
        " are required; size it with the matching "
        "*_workspace_size()");
}

}  // namespace detail
}  // namespace reparam

#endif  // REPARAM_CORE_WORKSPACE_HPP
