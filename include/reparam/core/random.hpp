// SPDX-License-Identifier: Apache-2.0
// Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random
// Numbers: As Easy as 1, 2, 3", SC'11). Output is a pure function of (counter, key), so a sampler
// that keys on the seed and puts the row index in the counter gives the same numbers however the
// rows are split across threads. Used by the samplers and randomized algorithms of every family.
#ifndef REPARAM_CORE_RANDOM_HPP
#define REPARAM_CORE_RANDOM_HPP

#include <array>
#include <cstdint>
#include <limits>

namespace reparam {

using philox4x32_counter = std::array<std::uint32_t, 4>;
using philox4x32_key = std::array<std::uint32_t, 2>;

namespace detail {

// Multipliers and Weyl key increments of Philox4x32 (SC'11, table 2 and section 4.2).
inline constexpr std::uint32_t philox_m0 = 0xD2511F53u;
inline constexpr std::uint32_t philox_m1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox_w0 = 0x9E3779B9u;  // golden ratio
inline constexpr std::uint32_t philox_w1 = 0xBB67AE85u;  // sqrt(3) - 1

constexpr philox4x32_counter philox_round(const philox4x32_counter& x,
                                          const philox4x32_key& k) noexcept {
  const std::uint64_t p0 = std::uint64_t{philox_m0} * x[0];
  const std::uint64_t p1 = std::uint64_t{philox_m1} * x[2];
  const auto hi0 = static_cast<std::uint32_t>(p0 >> 32);
  const auto lo0 = static_cast<std::uint32_t>(p0);
  const auto hi1 = static_cast<std::uint32_t>(p1 >> 32);
  const auto lo1 = static_cast<std::uint32_t>(p1);
  return {hi1 ^ x[1] ^ k[0], lo1, hi0 ^ x[3] ^ k[1], lo0};
}

}  // namespace detail

/// One Philox4x32-10 block: 128 random bits for (counter, key). constexpr, no state.
constexpr philox4x32_counter philox4x32_10(philox4x32_counter counter,
                                           philox4x32_key key) noexcept {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += detail::philox_w0;
      key[1] += detail::philox_w1;
    }
    counter = detail::philox_round(counter, key);
  }
  return counter;
}

/// A stream of 32-bit words: block b of stream s is philox4x32_10({b_lo, b_hi, s_lo, s_hi},
/// {seed_lo, seed_hi}). Satisfies UniformRandomBitGenerator, so it plugs into <random>
/// distributions. Use one engine per row (stream = row index) for split-independent results.
class philox_engine {
 public:
  using result_type = std::uint32_t;

  explicit constexpr philox_engine(std::uint64_t seed = 0, std::uint64_t stream = 0) noexcept
      : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
        stream_(stream) {}

  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

  /// Block `block_index` of this stream, independent of the engine's position.
  constexpr philox4x32_counter block(std::uint64_t block_index) const noexcept {
    return philox4x32_10(
        {static_cast<std::uint32_t>(block_index), static_cast<std::uint32_t>(block_index >> 32),
         static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)},
        key_);
  }

  /// Next word: words 0..3 of block 0, then of block 1, and so on.
  constexpr result_type operator()() noexcept {
    if (lane_ == 4) {
      buffer_ = block(next_block_++);
      lane_ = 0;
    }
    return buffer_[lane_++];
  }

  /// Skips `count` words in O(1).
  constexpr void discard(std::uint64_t count) noexcept {
    const std::uint64_t position = word_position() + count;
    next_block_ = position / 4;
    lane_ = 4;
    const auto skip = static_cast<unsigned>(position % 4);
    if (skip != 0) {
      buffer_ = block(next_block_++);
      lane_ = skip;
    }
  }

  /// Words produced so far.
  constexpr std::uint64_t word_position() const noexcept {
    return lane_ == 4 ? next_block_ * 4 : (next_block_ - 1) * 4 + lane_;
  }

  constexpr std::uint64_t stream() const noexcept { return stream_; }

 private:
  philox4x32_key key_;
  std::uint64_t stream_;
  std::uint64_t next_block_ = 0;
  philox4x32_counter buffer_{};
  unsigned lane_ = 4;
};

/// Uniform float on the open interval (0, 1) from the top 23 bits of `bits`: the 2^23 midpoints
/// (j + 0.5) * 2^-23. j + 0.5 needs 24 significant bits, exactly a float's, so every value is
/// exact: 0 and 1 never occur (the extremes are 2^-24 and 1 - 2^-24) and the law is symmetric.
constexpr float uniform_open01_float(std::uint32_t bits) noexcept {
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

/// Uniform double on (0, 1) from 52 bits of two words: the 2^52 midpoints (j + 0.5) * 2^-52,
/// exact for the same reason; the extremes are 2^-53 and 1 - 2^-53.
constexpr double uniform_open01_double(std::uint32_t high, std::uint32_t low) noexcept {
  const std::uint64_t j = (std::uint64_t{high} << 20) | (low >> 12);
  return (static_cast<double>(j) + 0.5) * (1.0 / 4503599627370496.0);
}

}  // namespace reparam

#endif  // REPARAM_CORE_RANDOM_HPP
