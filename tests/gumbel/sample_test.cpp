// SPDX-License-Identifier: Apache-2.0
// gumbel/sample.hpp against independent oracles: the frequencies of 10^6 draws against the
// categorical law softmax(l / tau) and the Plackett-Luce law of ordered samples without
// replacement (chi-square, fixed keys), the pruning kernels of every compiled ISA against the
// scalar reference bit for bit, split invariance, the logits/probabilities consistency, the
// multi-pass top-k, no allocation, and every documented refusal.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/sample.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_max.hpp>
#include <reparam/kernels/simd/gumbel_max.hpp>

#include "support/count_allocations.hpp"
#include "support/gumbel_oracles.hpp"
#include "support/random.hpp"
#include "support/statistics.hpp"

namespace {

namespace gumbel = reparam::gumbel;
namespace kernels = reparam::kernels;
using reparam::index;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): the shared oracles

constexpr float finf = std::numeric_limits<float>::infinity();

/// Draws per goodness-of-fit test (the main laws; variations use a quarter), and the p-value
/// below which a law is rejected (a fixed key makes every test deterministic; 1e-4 keeps the
/// family of tests far from false alarms).
#if defined(NDEBUG)
constexpr index draws = 1000000;
#else
constexpr index draws = 100000;  // unoptimized sanitizer builds: same tests, fewer draws
#endif
constexpr index few_draws = draws / 4;
constexpr double min_p_value = 1e-4;

std::vector<double> normalized(const std::vector<double>& weights) {
  double sum = 0.0;
  for (const double w : weights) {
    sum += w;
  }
  std::vector<double> p(weights);
  for (double& x : p) {
    x /= sum;
  }
  return p;
}

template <class T>
std::vector<T> cast_vector(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// `rows` rows that all view `row` (row stride 0): many draws of one distribution, each row
/// with its own noise, without storing the rows.
template <class T>
reparam::const_matrix_map<T> repeated(const std::vector<T>& row, index rows) {
  return reparam::row_major_map(row.data(), rows, static_cast<index>(row.size()), 0);
}

void require_law(const std::vector<std::int64_t>& counts, const std::vector<double>& law) {
  const auto result = reparam::test::chi_square_test(counts, law);
  CAPTURE(result.statistic, result.dof, result.bins, result.p_value);
  REQUIRE(result.dof >= 1);
  REQUIRE(result.p_value > min_p_value);
}

std::vector<std::int64_t> histogram(const gumbel::index_vector& samples, index classes,
                                    index first = 0, index step = 1) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(classes), 0);
  index out_of_range = 0;
  for (index r = first; r < samples.size(); r += step) {
    if (samples[r] < 0 || samples[r] >= classes) {
      ++out_of_range;
      continue;
    }
    ++counts[static_cast<std::size_t>(samples[r])];
  }
  REQUIRE(out_of_range == 0);
  return counts;
}

/// Standard normal from two open uniforms (Box-Muller).
double gaussian(reparam::philox_engine& engine) {
  const double u1 = reparam::uniform_open01_double(engine(), engine());
  const double u2 = reparam::uniform_open01_double(engine(), engine());
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

std::vector<double> gaussian_vector(index size, double sd, std::uint64_t seed) {
  reparam::philox_engine engine(seed, 17);
  std::vector<double> v(static_cast<std::size_t>(size));
  for (double& x : v) {
    x = sd * gaussian(engine);
  }
  return v;
}

/// Plackett-Luce probability of the ordered sample `order` from the law p.
double plackett_luce(const std::vector<double>& p, const std::vector<index>& order) {
  double prob = 1.0;
  double used = 0.0;
  for (const index i : order) {
    const double pi = p[static_cast<std::size_t>(i)];
    prob *= pi / (1.0 - used);
    used += pi;
  }
  return prob;
}

// ---- distributions ----

TEST_CASE("gumbel_max frequencies match softmax(logits / tau)", "[gumbel][sample]") {
  struct law_case {
    const char* name;
    std::vector<double> logits;
    double tau;
    index draws;
  };
  const std::vector<law_case> cases = {
      {"uniform", std::vector<double>(10, 0.0), 1.0, draws},
      {"random normal", gaussian_vector(16, 1.5, 11), 1.0, draws},
      {"peaked at +10", {0.0, 0.0, 10.0, 0.0}, 1.0, draws},
      {"masked", {0.5, -inf, 1.0, -inf, -inf, 0.0, 2.0, -inf}, 1.0, draws},
      {"offsets +-255", {255.0, -255.0, 254.0, -254.0, 253.0, 254.5}, 1.0, draws},
      {"random normal, tau 0.3", gaussian_vector(12, 1.0, 12), 0.3, few_draws},
      {"random normal, tau 4", gaussian_vector(40, 2.0, 13), 4.0, few_draws},
      {"offsets +255", {255.0, 254.0, 253.5, 255.0, 254.75}, 1.0, few_draws},
      {"offsets -255", {-255.0, -254.0, -256.0, -255.5}, 1.0, few_draws},
      {"40 classes, Zipf", {}, 1.0, few_draws},
  };
  for (const law_case& c : cases) {
    std::vector<double> logits = c.logits;
    if (logits.empty()) {
      for (int i = 1; i <= 40; ++i) {
        logits.push_back(-std::log(static_cast<double>(i)));
      }
    }
    SECTION(c.name) {
      const auto row = cast_vector<float>(logits);
      const auto samples = gumbel::gumbel_max(repeated(row, c.draws), {2024, 1}, c.tau);
      const auto counts = histogram(samples, static_cast<index>(row.size()));
      const auto law = softmax(logits, c.tau);
      for (std::size_t i = 0; i < law.size(); ++i) {
        if (law[i] == 0.0) {
          REQUIRE(counts[i] == 0);  // masked classes are never drawn
        }
      }
      require_law(counts, law);
    }
  }
}

TEST_CASE("gumbel_max of a very peaked row almost never leaves the peak", "[gumbel][sample]") {
  // One class at +20: each other class has probability e^-20 / (1 + 4 e^-20) = 2.1e-9, so the
  // expected number of draws elsewhere is below 0.002 (P(>= 3) < 1e-9).
  const std::vector<float> row = {0.f, 20.f, 0.f, 0.f, 0.f};
  const auto samples = gumbel::gumbel_max(repeated(row, few_draws), {7, 3});
  const auto counts = histogram(samples, 5);
  REQUIRE(counts[1] >= few_draws - 2);
}

TEST_CASE("gumbel_max with per-row temperatures follows each row's law", "[gumbel][sample]") {
  const std::vector<double> logits = {1.0, 0.0, -0.5, 2.0, 0.25, -inf};
  const auto row = cast_vector<float>(logits);
  reparam::vector<double> taus(draws);
  for (index r = 0; r < draws; ++r) {
    taus[r] = r % 2 == 0 ? 0.5 : 2.0;
  }
  const auto samples =
      gumbel::gumbel_max(repeated(row, draws), {99, 0}, gumbel::temperature::per_row(taus));
  require_law(histogram(samples, 6, 0, 2), softmax(logits, 0.5));
  require_law(histogram(samples, 6, 1, 2), softmax(logits, 2.0));
}

TEST_CASE("gumbel_max on double logits follows softmax", "[gumbel][sample]") {
  const std::vector<double> logits = gaussian_vector(20, 1.0, 5);
  const auto samples = gumbel::gumbel_max(repeated(logits, few_draws), {31, 4}, 0.7);
  require_law(histogram(samples, 20), softmax(logits, 0.7));
}

TEST_CASE("sample_from_probs frequencies match the normalized weights", "[gumbel][sample]") {
  SECTION("unnormalized weights with zeros") {
    const std::vector<double> weights = {0.0, 3.0, 1.0, 0.0, 0.5, 2.5, 1e-3, 0.0};
    const auto row = cast_vector<float>(weights);
    const auto samples = gumbel::sample_from_probs(repeated(row, draws), {5, 5});
    const auto counts = histogram(samples, 8);
    REQUIRE(counts[0] == 0);
    REQUIRE(counts[3] == 0);
    REQUIRE(counts[7] == 0);
    require_law(counts, normalized(weights));
  }
  SECTION("a softmax row in double") {
    const auto p = softmax(gaussian_vector(30, 2.0, 6));
    const auto samples = gumbel::sample_from_probs(repeated(p, few_draws), {5, 6});
    require_law(histogram(samples, 30), p);
  }
  SECTION("tiny weights (scale 1e-30)") {
    std::vector<float> row = {1e-30f, 4e-30f, 2e-30f, 0.f, 3e-30f};
    const auto samples = gumbel::sample_from_probs(repeated(row, few_draws), {5, 7});
    require_law(histogram(samples, 5), normalized({1.0, 4.0, 2.0, 0.0, 3.0}));
  }
}

TEST_CASE("gumbel_top_k ordered pairs follow the Plackett-Luce law", "[gumbel][sample]") {
  // P(first i, then j) = p_i p_j / (1 - p_i).
  const auto check_pairs = [](const gumbel::index_matrix& out, const std::vector<double>& p) {
    const auto classes = static_cast<index>(p.size());
    std::vector<std::int64_t> counts(p.size() * p.size(), 0);
    std::vector<double> law(p.size() * p.size(), 0.0);
    for (index i = 0; i < classes; ++i) {
      for (index j = 0; j < classes; ++j) {
        if (i != j) {
          law[static_cast<std::size_t>(i * classes + j)] = plackett_luce(p, {i, j});
        }
      }
    }
    for (index r = 0; r < out.rows(); ++r) {
      ++counts[static_cast<std::size_t>(out(r, 0) * classes + out(r, 1))];
    }
    require_law(counts, law);
  };
  SECTION("from logits, 5 classes") {
    const std::vector<double> logits = {0.5, -0.25, 1.0, 0.0, -1.0};
    const auto out = gumbel::gumbel_top_k(repeated(cast_vector<float>(logits), draws), 2, {8, 1});
    check_pairs(out, softmax(logits));
  }
  SECTION("from logits with tau 0.5 and a masked class") {
    const std::vector<double> logits = {0.5, -inf, 1.0, 0.0, -0.5};
    const auto out =
        gumbel::gumbel_top_k(repeated(cast_vector<float>(logits), few_draws), 2, {8, 2}, 0.5);
    check_pairs(out, softmax(logits, 0.5));  // the masked class has p = 0: never drawn
  }
  SECTION("from probabilities, 4 classes") {
    const std::vector<double> weights = {2.0, 1.0, 0.5, 4.5};
    const auto out =
        gumbel::top_k_from_probs(repeated(cast_vector<float>(weights), draws), 2, {8, 3});
    check_pairs(out, normalized(weights));
  }
}

TEST_CASE("gumbel_top_k unordered triples follow the Plackett-Luce law", "[gumbel][sample]") {
  const std::vector<double> logits = {0.3, -0.4, 1.2, 0.0, -1.0};
  const auto p = softmax(logits);
  const auto out = gumbel::gumbel_top_k(repeated(cast_vector<float>(logits), draws), 3, {9, 9});
  // Sets as bit masks; P(set) sums the Plackett-Luce probabilities of its 6 orders.
  std::vector<std::int64_t> counts(32, 0);
  std::vector<double> law(32, 0.0);
  for (index a = 0; a < 5; ++a) {
    for (index b = 0; b < 5; ++b) {
      for (index c = 0; c < 5; ++c) {
        if (a != b && b != c && a != c) {
          law[(1u << a) | (1u << b) | (1u << c)] += plackett_luce(p, {a, b, c});
        }
      }
    }
  }
  for (index r = 0; r < out.rows(); ++r) {
    ++counts[(1u << out(r, 0)) | (1u << out(r, 1)) | (1u << out(r, 2))];
  }
  require_law(counts, law);
}

TEST_CASE("gumbel_top_k values are the perturbed logits in decreasing order", "[gumbel][sample]") {
  const auto logits = cast_vector<float>(gaussian_vector(300, 3.0, 21));
  const index rows = 16;
  const index k = 10;
  const auto view = repeated(logits, rows);
  gumbel::index_matrix out(rows, k);
  matrix<double> values(rows, k);
  const gumbel::noise_key key{77, 2};
  gumbel::gumbel_top_k_rows(view, k, key, out, values, reparam::all_rows(rows), 0.8);
  for (index r = 0; r < rows; ++r) {
    // Brute force in double: every class's l / tau + g from the public noise.
    std::vector<std::pair<double, index>> all;
    for (index c = 0; c < 300; ++c) {
      all.emplace_back(static_cast<double>(logits[static_cast<std::size_t>(c)]) / 0.8 +
                           gumbel::gumbel_noise(key, r, c),
                       c);
    }
    std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    for (index j = 0; j < k; ++j) {
      REQUIRE(out(r, j) == all[static_cast<std::size_t>(j)].second);
      REQUIRE(values(r, j) == all[static_cast<std::size_t>(j)].first);
    }
  }
}

// ---- the pruning kernels against the reference, bit for bit ----

/// One row kind of the equality tests.
struct row_kind {
  const char* name;
  double tau;
};

/// Row `kind` of width `cols`: LLM-like Gaussian logits (sd 3), all equal, 90% masked, integer
/// logits at tau 1e-20 (exact ties: the noise vanishes in the rounding), a peak +60 above
/// the rest (chunks skipped), a very wide spread (sd 30), Zipf log-probabilities, one finite
/// class in 300 (masked chunks skipped).
std::vector<double> make_row(int kind, index cols, std::uint64_t seed) {
  reparam::philox_engine engine(
      seed, static_cast<std::uint64_t>(cols) * 8 + static_cast<std::uint64_t>(kind));
  std::vector<double> row(static_cast<std::size_t>(cols));
  for (index c = 0; c < cols; ++c) {
    double& x = row[static_cast<std::size_t>(c)];
    const double u = reparam::uniform_open01_double(engine(), engine());
    switch (kind) {
      case 0:
        x = 3.0 * gaussian(engine);
        break;
      case 1:
        x = 0.25;
        break;
      case 2:
        x = u < 0.9 ? -inf : gaussian(engine);
        break;
      case 3:
        x = std::floor(u * 4.0);
        break;
      case 4:
        x = c == cols / 3 ? 60.0 : gaussian(engine);
        break;
      case 5:
        x = 30.0 * gaussian(engine);
        break;
      case 6:
        x = -std::log(static_cast<double>(c + 1));
        break;
      default:
        x = c % 300 == 7 ? gaussian(engine) : -inf;
        break;
    }
  }
  if (kind == 2 || kind == 7) {
    row[static_cast<std::size_t>(cols - 1)] = 0.5;  // at least one finite class
  }
  return row;
}

constexpr row_kind kinds[] = {{"gaussian sd 3", 1.0}, {"equal", 1.0},    {"masked", 0.7},
                              {"ties", 1e-20},        {"peak +60", 1.0}, {"sd 30", 1.0},
                              {"zipf", 0.9},          {"sparse", 1.0}};
constexpr int kind_count = 8;

template <class Arch, class T>
void check_row_against_reference(const std::vector<T>& row, double tau, gumbel::noise_key key,
                                 std::uint64_t row_index) {
  const auto cols = static_cast<index>(row.size());
  const T* data = row.data();
  index finite = 0;
  index positive = 0;
  std::vector<T> probs(row.size());
  for (std::size_t c = 0; c < row.size(); ++c) {
    finite += row[c] == -std::numeric_limits<T>::infinity() ? 0 : 1;
    // Probabilities: exp of the logits (zeros where masked), unnormalized.
    probs[c] = static_cast<T>(std::exp(static_cast<double>(row[c]) / 64.0));
    positive += probs[c] > T(0) ? 1 : 0;
  }
  REQUIRE(kernels::simd::gumbel_max_row<Arch>(data, cols, tau, key, row_index) ==
          kernels::reference::gumbel_max_row(data, cols, tau, key, row_index));
  REQUIRE(kernels::simd::sample_from_probs_row<Arch>(probs.data(), cols, key, row_index) ==
          kernels::reference::sample_from_probs_row(probs.data(), cols, key, row_index));
  for (const index k : {index{1}, index{2}, index{5}, index{40}}) {
    CAPTURE(k);
    std::vector<index> fast_i(static_cast<std::size_t>(k), -7);
    std::vector<index> ref_i(static_cast<std::size_t>(k), -7);
    std::vector<double> fast_v(static_cast<std::size_t>(k), -7.0);
    std::vector<double> ref_v(static_cast<std::size_t>(k), -7.0);
    const index n_ref = kernels::reference::gumbel_top_k_row(data, cols, tau, key, row_index, k,
                                                             ref_i.data(), ref_v.data());
    const index n_fast = kernels::simd::gumbel_top_k_row<Arch>(data, cols, tau, key, row_index, k,
                                                               fast_i.data(), fast_v.data());
    REQUIRE(n_ref == std::min(k, finite));
    REQUIRE(n_fast == n_ref);
    for (index j = 0; j < n_ref; ++j) {
      REQUIRE(fast_i[static_cast<std::size_t>(j)] == ref_i[static_cast<std::size_t>(j)]);
      REQUIRE(fast_v[static_cast<std::size_t>(j)] == ref_v[static_cast<std::size_t>(j)]);
    }
    // A second pass after the first: the next k classes.
    if (n_ref == k) {
      const kernels::gumbel_rank after{ref_v.back(), ref_i.back()};
      const index m_ref = kernels::reference::gumbel_top_k_row(data, cols, tau, key, row_index, k,
                                                               ref_i.data(), ref_v.data(), &after);
      const index m_fast = kernels::simd::gumbel_top_k_row<Arch>(
          data, cols, tau, key, row_index, k, fast_i.data(), fast_v.data(), &after);
      REQUIRE(m_fast == m_ref);
      for (index j = 0; j < m_ref; ++j) {
        REQUIRE(fast_i[static_cast<std::size_t>(j)] == ref_i[static_cast<std::size_t>(j)]);
        REQUIRE(fast_v[static_cast<std::size_t>(j)] == ref_v[static_cast<std::size_t>(j)]);
      }
    }
    const index p_ref = kernels::reference::top_k_from_probs_row(probs.data(), cols, key, row_index,
                                                                 k, ref_i.data(), ref_v.data());
    const index p_fast = kernels::simd::top_k_from_probs_row<Arch>(
        probs.data(), cols, key, row_index, k, fast_i.data(), fast_v.data());
    REQUIRE(p_ref == std::min(k, positive));
    REQUIRE(p_fast == p_ref);
    for (index j = 0; j < p_ref; ++j) {
      REQUIRE(fast_i[static_cast<std::size_t>(j)] == ref_i[static_cast<std::size_t>(j)]);
      REQUIRE(fast_v[static_cast<std::size_t>(j)] == ref_v[static_cast<std::size_t>(j)]);
    }
  }
}

/// Whether xsimd can build `Arch` in this translation unit (generic: always).
template <class Arch>
constexpr bool is_compiled() {
  return Arch::supported();
}

template <class Arch>
void check_arch_against_reference(const char* arch_name, bool is_available,
                                  kernels::simd::gumbel_max_path expected_path) {
  if constexpr (!is_compiled<Arch>()) {
    WARN(arch_name << " is not enabled by this build's flags; its sampler path is not tested");
    static_cast<void>(is_available);
    static_cast<void>(expected_path);
  } else {
    if (!is_available) {
      WARN(arch_name << " is not available on this CPU; its sampler path is not tested");
      return;
    }
    REQUIRE(kernels::simd::gumbel_max_path_of<Arch>() == expected_path);
    const std::uint64_t seed = reparam::test::test_seed(0x6a7e);
    CAPTURE(arch_name, seed);
    const index widths[] = {1,  2,  3,  4,  5,   7,   8,   9,   15,  16,  17,  31,   32,
                            33, 63, 64, 65, 127, 255, 256, 257, 300, 511, 513, 1000, 1777};
    for (const index cols : widths) {
      for (int kind = 0; kind < kind_count; ++kind) {
        CAPTURE(cols, kinds[kind].name);
        const auto row = make_row(kind, cols, seed);
        const gumbel::noise_key key{seed ^ 0x5eed, static_cast<std::uint32_t>(cols)};
        const auto row_index = static_cast<std::uint64_t>(kind * 1000 + cols);
        check_row_against_reference<Arch>(cast_vector<float>(row), kinds[kind].tau, key, row_index);
        if (cols % 7 == 1 || cols == 1000) {  // double logits too
          check_row_against_reference<Arch>(row, kinds[kind].tau, key, row_index + 1);
        }
      }
    }
    // Temperatures: huge and tiny (the ones outside [1e-30, 1e30] run the reference).
    for (const double tau : {1e-30, 1e-12, 1e-6, 1e6, 1e12, 1e30, 1e-35, 1e35}) {
      CAPTURE(tau);
      const auto row = cast_vector<float>(make_row(0, 300, seed));
      check_row_against_reference<Arch>(row, tau, {seed, 3}, 12);
    }
  }
}

TEST_CASE("the pruning samplers equal the reference on every compiled ISA", "[gumbel][sample]") {
  using kernels::simd::gumbel_max_path;
  const auto available = xsimd::available_architectures();
  check_arch_against_reference<xsimd::avx512bw>("avx512bw", available.avx512bw != 0,
                                                gumbel_max_path::avx512);
  check_arch_against_reference<xsimd::fma3<xsimd::avx2>>("fma3<avx2>", available.fma3_avx2 != 0,
                                                         gumbel_max_path::avx2);
  check_arch_against_reference<xsimd::sse2>("sse2", available.sse2 != 0, gumbel_max_path::sse2);
  check_arch_against_reference<xsimd::generic>("generic", true, gumbel_max_path::generic);
}

TEST_CASE("the pruning samplers equal the reference on LLM-sized rows", "[gumbel][sample]") {
  const std::uint64_t seed = reparam::test::test_seed(0x32000);
  CAPTURE(seed);
  for (int kind : {0, 2, 6, 7}) {
    CAPTURE(kinds[kind].name);
    const auto row = cast_vector<float>(make_row(kind, 32000, seed));
    check_row_against_reference<reparam::default_arch>(row, kinds[kind].tau, {seed, 1}, 5);
  }
}

TEST_CASE("the row kernels find nothing in a row without a class", "[gumbel][sample]") {
  const std::vector<float> masked(40, -finf);
  const std::vector<float> zeros(40, 0.f);
  index idx[3] = {-7, -7, -7};
  double val[3] = {0.0, 0.0, 0.0};
  for (const index cols : {index{5}, index{40}}) {
    REQUIRE(kernels::reference::gumbel_max_row(masked.data(), cols, 1.0, {1, 1}, 0) == -1);
    REQUIRE(kernels::simd::gumbel_max_row<reparam::default_arch>(masked.data(), cols, 1.0, {1, 1},
                                                                 0) == -1);
    REQUIRE(kernels::simd::sample_from_probs_row<reparam::default_arch>(zeros.data(), cols, {1, 1},
                                                                        0) == -1);
    REQUIRE(kernels::simd::gumbel_top_k_row<reparam::default_arch>(masked.data(), cols, 1.0, {1, 1},
                                                                   0, 3, idx, val) == 0);
    REQUIRE(kernels::simd::top_k_from_probs_row<reparam::default_arch>(zeros.data(), cols, {1, 1},
                                                                       0, 3, idx, val) == 0);
  }
}

TEST_CASE("gumbel_max rows with equal maxima at tiny tau take the lowest index",
          "[gumbel][sample]") {
  // At tau 1e-20, l / tau = 3e20 absorbs any noise (ulp 65536): classes 3, 9 and 70 tie
  // exactly and class 3 must win, whatever the noise.
  std::vector<float> row(100, 1.0f);
  row[3] = row[9] = row[70] = 3.0f;
  const auto out = gumbel::gumbel_max(repeated(row, 200), {1, 1}, 1e-20);
  REQUIRE((out.array() == 3).all());
  const auto top = gumbel::gumbel_top_k(repeated(row, 50), 4, {1, 2}, 1e-20);
  for (index r = 0; r < top.rows(); ++r) {
    REQUIRE(top(r, 0) == 3);
    REQUIRE(top(r, 1) == 9);
    REQUIRE(top(r, 2) == 70);
    REQUIRE(top(r, 3) == 0);
  }
}

// ---- determinism and the row split ----

TEST_CASE("samples do not depend on the row split and change with the step", "[gumbel][sample]") {
  const index rows = 64;
  const matrix<float> logits = reparam::test::random_matrix<float>(rows, 515, 404, -3.f, 3.f);
  const matrix<float> probs = logits.array().exp().matrix();
  const gumbel::noise_key key{123, 4};
  const auto whole = gumbel::gumbel_max(logits, key, 0.9);
  const auto whole_top = gumbel::gumbel_top_k(logits, 7, key, 0.9);
  const auto whole_probs = gumbel::sample_from_probs(probs, key);
  const auto whole_probs_top = gumbel::top_k_from_probs(probs, 7, key);
  for (const index parts : {2, 3, 7}) {
    gumbel::index_vector split(rows);
    gumbel::index_matrix split_top(rows, 7);
    gumbel::index_vector split_probs(rows);
    gumbel::index_matrix split_probs_top(rows, 7);
    for (const row_range part : reparam::split_rows(rows, parts)) {
      gumbel::gumbel_max_rows(logits, key, split, part, 0.9);
      gumbel::gumbel_top_k_rows(logits, 7, key, split_top, part, 0.9);
      gumbel::sample_from_probs_rows(probs, key, split_probs, part);
      gumbel::top_k_from_probs_rows(probs, 7, key, split_probs_top, part);
    }
    REQUIRE(split == whole);
    REQUIRE(split_top == whole_top);
    REQUIRE(split_probs == whole_probs);
    REQUIRE(split_probs_top == whole_probs_top);
  }
  // A row block sees the noise of its rows in the block, not in the matrix.
  const auto block = gumbel::gumbel_max(logits.middleRows(8, 16), key, 0.9);
  const matrix<float> copy = logits.middleRows(8, 16);
  REQUIRE(block == gumbel::gumbel_max(copy, key, 0.9));
  REQUIRE(gumbel::gumbel_max(logits, key, 0.9) == whole);
  // A new step is a new draw: over 64 rows of near-uniform logits most samples change.
  const auto next = gumbel::gumbel_max(logits, {123, 5}, 0.9);
  REQUIRE((next.array() != whole.array()).count() > rows / 2);
  const auto other_seed = gumbel::gumbel_max(logits, {124, 4}, 0.9);
  REQUIRE((other_seed.array() != whole.array()).count() > rows / 2);
}

TEST_CASE("top-k past the stack buffer equals the one-pass ranking", "[gumbel][sample]") {
  // Without a values output, k > 256 ranks in several scans that continue after the last class
  // of the previous one; with values, the values row is the buffer.
  const matrix<float> logits = reparam::test::random_matrix<float>(3, 900, 505, -2.f, 2.f);
  const index k = 700;
  const gumbel::noise_key key{3, 3};
  gumbel::index_matrix passes(3, k);
  gumbel::index_matrix one_pass(3, k);
  matrix<double> values(3, k);
  gumbel::gumbel_top_k_rows(logits, k, key, passes, reparam::all_rows(3), 1.5);
  gumbel::gumbel_top_k_rows(logits, k, key, one_pass, values, reparam::all_rows(3), 1.5);
  REQUIRE(passes == one_pass);
  std::vector<index> ref_i(k);
  std::vector<double> ref_v(k);
  for (index r = 0; r < 3; ++r) {
    kernels::reference::gumbel_top_k_row(logits.row(r).data(), 900, 1.5, key,
                                         static_cast<std::uint64_t>(r), k, ref_i.data(),
                                         ref_v.data());
    for (index j = 0; j < k; ++j) {
      REQUIRE(one_pass(r, j) == ref_i[static_cast<std::size_t>(j)]);
      REQUIRE(values(r, j) == ref_v[static_cast<std::size_t>(j)]);
    }
  }
  const matrix<float> probs = logits.array().exp().matrix();
  gumbel::index_matrix prob_passes(3, k);
  gumbel::top_k_from_probs_rows(probs, k, key, prob_passes, reparam::all_rows(3));
  for (index r = 0; r < 3; ++r) {
    kernels::reference::top_k_from_probs_row(probs.row(r).data(), 900, key,
                                             static_cast<std::uint64_t>(r), k, ref_i.data(),
                                             ref_v.data());
    for (index j = 0; j < k; ++j) {
      REQUIRE(prob_passes(r, j) == ref_i[static_cast<std::size_t>(j)]);
    }
  }
}

TEST_CASE("sample_from_probs(softmax(l)) equals gumbel_max(l) except at near ties",
          "[gumbel][sample]") {
  const std::vector<double> logits = gaussian_vector(50, 2.0, 77);
  const std::vector<double> p = softmax(logits);
  const index rows = few_draws;
  const gumbel::noise_key key{4242, 0};
  const auto from_logits = gumbel::gumbel_max(repeated(logits, rows), key);
  const auto from_probs = gumbel::sample_from_probs(repeated(p, rows), key);
  index mismatches = 0;
  for (index r = 0; r < rows; ++r) {
    const index a = from_logits[r];
    const index b = from_probs[r];
    if (a == b) {
      continue;
    }
    ++mismatches;
    // Only rounding can separate them: the two perturbed values must nearly tie.
    const double va = logits[static_cast<std::size_t>(a)] + gumbel::gumbel_noise(key, r, a);
    const double vb = logits[static_cast<std::size_t>(b)] + gumbel::gumbel_noise(key, r, b);
    CAPTURE(r, a, b, va, vb);
    REQUIRE(std::abs(va - vb) <= 1e-12 * (1.0 + std::abs(va)));
  }
  CAPTURE(mismatches);
  REQUIRE(mismatches <= 2);
}

TEST_CASE("gumbel samplers do not allocate", "[gumbel][sample]") {
  const matrix<float> logits = reparam::test::random_matrix<float>(4, 3000, 606, -4.f, 4.f);
  const matrix<double> probs = logits.cast<double>().array().exp().matrix();
  gumbel::index_vector out(4);
  gumbel::index_matrix top(4, 300);
  matrix<double> values(4, 300);
  const gumbel::noise_key key{1, 1};
  const reparam::vector<double> taus = reparam::vector<double>::Constant(4, 0.5);
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  gumbel::gumbel_max_rows(logits, key, out, reparam::all_rows(4));
  gumbel::gumbel_max_rows(logits, key, out, reparam::all_rows(4),
                          gumbel::temperature::per_row(taus));
  gumbel::sample_from_probs_rows(probs, key, out, reparam::all_rows(4));
  gumbel::gumbel_top_k_rows(logits, 300, key, top, reparam::all_rows(4));  // two scans
  gumbel::gumbel_top_k_rows(logits, 300, key, top, values, reparam::all_rows(4));
  gumbel::top_k_from_probs_rows(probs, 300, key, top, reparam::all_rows(4));
  Eigen::internal::set_is_malloc_allowed(true);
  REQUIRE(reparam::test::allocations() == before);
}

// ---- refusals ----

TEST_CASE("gumbel samplers refuse bad arguments and leave the output untouched",
          "[gumbel][sample]") {
  matrix<float> logits = reparam::test::random_matrix<float>(3, 6, 707, -1.f, 1.f);
  const gumbel::noise_key key{1, 2};
  gumbel::index_vector out = gumbel::index_vector::Constant(3, -5);
  gumbel::index_matrix top = gumbel::index_matrix::Constant(3, 2, -5);
  matrix<double> values = matrix<double>::Constant(3, 2, -5.0);
  const auto untouched = [&] {
    REQUIRE((out.array() == -5).all());
    REQUIRE((top.array() == -5).all());
    REQUIRE((values.array() == -5.0).all());
  };
  const auto all = reparam::all_rows(3);

  SECTION("NaN and +inf logits") {
    logits(2, 4) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(
        gumbel::gumbel_max_rows(logits, key, out, all),
        Contains("gumbel::gumbel_max_rows") && Contains("logits(2, 4)") && Contains("nan"));
    logits(2, 4) = finf;
    REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(logits, key, out, all),
                        Contains("logits(2, 4) is inf"));
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 2, key, top, values, all),
                        Contains("gumbel::gumbel_top_k_rows") && Contains("logits(2, 4)"));
    // Rows outside the range are not read.
    gumbel::gumbel_max_rows(logits, key, out, row_range{0, 2});
    REQUIRE(out[2] == -5);
    out.setConstant(-5);
  }
  SECTION("rows without enough finite logits") {
    logits.row(1).setConstant(-finf);
    REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(logits, key, out, all),
                        Contains("row 1 of logits has 0 finite entries"));
    logits.row(1).setConstant(0.f);
    logits(0, 0) = logits(0, 1) = logits(0, 2) = logits(0, 3) = logits(0, 4) = -finf;
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 2, key, top, all),
                        Contains("gumbel::gumbel_top_k_rows") &&
                            Contains("row 0 of logits has 1 finite entries; it needs at least 2"));
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k(logits, 7, key), Contains("k 7 exceeds the 6"));
  }
  SECTION("bad temperatures") {
    for (const double tau : {0.0, -1.0, inf, std::numeric_limits<double>::quiet_NaN()}) {
      CAPTURE(tau);
      REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(logits, key, out, all, tau),
                          Contains("gumbel::gumbel_max_rows") && Contains("tau") &&
                              Contains("must be finite and > 0"));
      REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 2, key, top, all, tau),
                          Contains("gumbel::gumbel_top_k_rows") && Contains("tau"));
    }
    reparam::vector<double> taus(2);
    taus << 1.0, 2.0;
    REQUIRE_THROWS_WITH(
        gumbel::gumbel_max_rows(logits, key, out, all, gumbel::temperature::per_row(taus)),
        Contains("tau has 2 per-row values for 3 rows"));
    reparam::vector<double> bad(3);
    bad << 1.0, -0.5, 1.0;
    REQUIRE_THROWS_WITH(
        gumbel::gumbel_max_rows(logits, key, out, all, gumbel::temperature::per_row(bad)),
        Contains("tau[1] -0.5"));
  }
  SECTION("shapes, k and row ranges") {
    gumbel::index_vector short_out = gumbel::index_vector::Constant(2, -5);
    REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(logits, key, short_out, all),
                        Contains("out has 2 entries for 3 rows"));
    REQUIRE((short_out.array() == -5).all());
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 0, key, top, all),
                        Contains("gumbel::gumbel_top_k_rows") && Contains("k 0 must be >= 1"));
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 3, key, top, all),
                        Contains("out is [3, 2] but must be [3, 3]"));
    matrix<double> wrong_values = matrix<double>::Constant(3, 3, -5.0);
    REQUIRE_THROWS_WITH(gumbel::gumbel_top_k_rows(logits, 2, key, top, wrong_values, all),
                        Contains("values is [3, 3] but must be [3, 2]"));
    REQUIRE((wrong_values.array() == -5.0).all());
    REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(logits, key, out, row_range{1, 4}),
                        Contains("row range [1, 4)"));
    REQUIRE_THROWS_WITH(gumbel::top_k_from_probs_rows(logits, -1, key, top, all),
                        Contains("gumbel::top_k_from_probs_rows") && Contains("k -1"));
  }
  SECTION("more than 2^33 classes") {
    const float one = 1.0f;
    const index huge = (index{1} << 33) + 1;
    const auto wide = reparam::row_major_map(&one, 1, huge, 0);
    gumbel::index_vector one_out = gumbel::index_vector::Constant(1, -5);
    REQUIRE_THROWS_WITH(gumbel::gumbel_max_rows(wide, key, one_out, reparam::all_rows(1)),
                        Contains("gumbel::gumbel_max_rows") && Contains("at most 2^33"));
    REQUIRE_THROWS_WITH(gumbel::sample_from_probs_rows(wide, key, one_out, reparam::all_rows(1)),
                        Contains("gumbel::sample_from_probs_rows") && Contains("at most 2^33"));
    REQUIRE(one_out[0] == -5);
  }
  SECTION("bad probabilities") {
    matrix<float> probs = logits.array().exp().matrix();
    probs(1, 3) = -0.25f;
    REQUIRE_THROWS_WITH(
        gumbel::sample_from_probs_rows(probs, key, out, all),
        Contains("gumbel::sample_from_probs_rows") && Contains("probs(1, 3)") && Contains("-0.25"));
    probs(1, 3) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(gumbel::sample_from_probs_rows(probs, key, out, all),
                        Contains("probs(1, 3) is nan"));
    probs(1, 3) = finf;
    REQUIRE_THROWS_WITH(
        gumbel::top_k_from_probs_rows(probs, 2, key, top, all),
        Contains("gumbel::top_k_from_probs_rows") && Contains("probs(1, 3) is inf"));
    probs.row(1).setZero();
    REQUIRE_THROWS_WITH(gumbel::sample_from_probs_rows(probs, key, out, all),
                        Contains("row 1 of probs has 0 positive entries"));
    probs.row(1).setOnes();
    probs(2, 0) = probs(2, 1) = probs(2, 2) = probs(2, 3) = probs(2, 4) = 0.f;
    REQUIRE_THROWS_WITH(gumbel::top_k_from_probs_rows(probs, 2, key, top, all),
                        Contains("row 2 of probs has 1 positive entries; it needs at least 2"));
  }
  untouched();
}

}  // namespace
