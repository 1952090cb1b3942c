// SPDX-License-Identifier: Apache-2.0
// POSIX file plumbing for reparam::io: a read-only private memory mapping and the pieces of an
// atomic write (unique temporary file, full writes, fsync, rename). Not API.
#ifndef REPARAM_IO_DETAIL_POSIX_FILE_HPP
#define REPARAM_IO_DETAIL_POSIX_FILE_HPP

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <system_error>
#include <utility>

#include <reparam/core/error.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace reparam::io::detail {

/// "No such file or directory (errno 2)": the strerror text, thread safe.
inline std::string errno_message(int error_number) {
  return reparam::detail::concat(std::generic_category().message(error_number), " (errno ",
                                 error_number, ")");
}

/// Throws io_error("<function>: <parts...>"); aborts with that message without exceptions.
template <class... Parts>
[[noreturn]] void raise_io_error(const char* function, const Parts&... parts) {
  reparam::detail::raise<io_error>(reparam::detail::concat(function, ": ", parts...));
}

/// Owns a file descriptor; closes it on destruction.
class file_descriptor {
 public:
  explicit file_descriptor(int fd) noexcept : fd_(fd) {}
  file_descriptor(const file_descriptor&) = delete;
  file_descriptor& operator=(const file_descriptor&) = delete;
  ~file_descriptor() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

/// A whole file mapped PROT_READ / MAP_PRIVATE. An empty file has data() == nullptr, size() == 0.
/// Move-only; unmaps on destruction.
class mapped_file {
 public:
  mapped_file() = default;
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  mapped_file& operator=(mapped_file&& other) noexcept {
    if (this != &other) {
      unmap();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~mapped_file() { unmap(); }

  /// Maps `path` read-only; io_error "<function>: cannot open '<path>': <strerror>" (or names
  /// the failing step) on failure.
  static mapped_file map_read_only(const std::string& path, const char* function) {
    const file_descriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      const int error_number = errno;
      raise_io_error(function, "cannot open '", path, "': ", errno_message(error_number));
    }
    struct stat status {};
    if (::fstat(fd.get(), &status) != 0) {
      const int error_number = errno;
      raise_io_error(function, "cannot stat '", path, "': ", errno_message(error_number));
    }
    reparam::detail::check_io(S_ISREG(status.st_mode), function, "'", path,
                              "' is not a regular file");
    mapped_file result;
    if (status.st_size <= 0) {
      return result;
    }
    reparam::detail::check_io(
        static_cast<std::uintmax_t>(status.st_size) <= std::numeric_limits<std::size_t>::max(),
        function, "'", path, "' is too large to map (", status.st_size, " bytes)");
    const auto size = static_cast<std::size_t>(status.st_size);
    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (address == MAP_FAILED) {
      const int error_number = errno;
      raise_io_error(function, "cannot mmap '", path, "' (", size,
                     " bytes): ", errno_message(error_number));
    }
    result.data_ = static_cast<const std::byte*>(address);
    result.size_ = size;
    return result;
  }

  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) {
      // munmap takes a non-const pointer; the mapping is ours and read-only.
      ::munmap(const_cast<std::byte*>(data_), size_);
      data_ = nullptr;
      size_ = 0;
    }
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Writes all `size` bytes, retrying short writes and EINTR. Returns 0 or an errno value.
inline int write_all(int fd, const void* data, std::size_t size) noexcept {
  const auto* cursor = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const ::ssize_t written = ::write(fd, cursor, size);
    if (written < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (written == 0) {
      return EIO;  // a regular file never legitimately accepts zero bytes
    }
    cursor += written;
    size -= static_cast<std::size_t>(written);
  }
  return 0;
}

/// Creates "<path>.tmp.<pid>.<counter>" exclusively (O_EXCL, mode 0666 minus umask) and stores
/// its descriptor and name. Returns 0 or an errno value (the name is set either way).
inline int create_unique_temp(const std::string& path, int* fd, std::string* temp_path) {
  static std::atomic<unsigned long> counter{0};
  int error_number = EEXIST;
  for (int attempt = 0; attempt < 100 && error_number == EEXIST; ++attempt) {
    *temp_path = reparam::detail::concat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
    *fd = ::open(temp_path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    error_number = *fd >= 0 ? 0 : errno;
  }
  return error_number;
}

/// Best-effort fsync of the directory holding `path`, so a completed rename survives a crash.
inline void sync_parent_directory(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  const std::string directory =
      slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace reparam::io::detail

#endif  // REPARAM_IO_DETAIL_POSIX_FILE_HPP
