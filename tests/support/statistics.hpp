// SPDX-License-Identifier: Apache-2.0
// Goodness-of-fit tests for the samplers' statistical tests: Pearson's chi-square with pooling of
// sparse bins (p-value from the regularized upper incomplete gamma function) and the one-sample
// Kolmogorov-Smirnov test (p-value from the Kolmogorov distribution with Stephens' correction).
#ifndef REPARAM_TESTS_SUPPORT_STATISTICS_HPP
#define REPARAM_TESTS_SUPPORT_STATISTICS_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace reparam::test {

/// Regularized upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a), a > 0, x >= 0: the
/// power series of P below x < a + 1, Lentz's continued fraction above (relative error ~1e-14).
inline double regularized_gamma_q(double a, double x) {
  if (!(a > 0.0) || !(x >= 0.0)) {
    throw std::invalid_argument("regularized_gamma_q: needs a > 0 and x >= 0");
  }
  if (x == 0.0) {
    return 1.0;
  }
  const double log_prefactor = a * std::log(x) - x - std::lgamma(a);
  if (x < a + 1.0) {
    double term = 1.0 / a;
    double sum = term;
    for (int n = 1; n < 100000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::abs(term) < std::abs(sum) * 1e-16) {
        break;
      }
    }
    return std::max(0.0, 1.0 - sum * std::exp(log_prefactor));
  }
  constexpr double tiny = 1e-300;
  double b = x + 1.0 - a;
  double c = 1.0 / tiny;
  double d = 1.0 / b;
  double h = d;
  for (int n = 1; n < 100000; ++n) {
    const double an = -n * (n - a);
    b += 2.0;
    d = an * d + b;
    d = std::abs(d) < tiny ? tiny : d;
    c = b + an / c;
    c = std::abs(c) < tiny ? tiny : c;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::abs(delta - 1.0) < 1e-16) {
      break;
    }
  }
  return std::exp(log_prefactor) * h;
}

/// P(X >= statistic) for X ~ chi-square with `dof` degrees of freedom.
inline double chi_square_p_value(double statistic, double dof) {
  return regularized_gamma_q(0.5 * dof, 0.5 * statistic);
}

struct chi_square_result {
  double statistic = 0.0;
  int dof = 0;
  double p_value = 1.0;
  int bins = 0;  ///< bins after pooling
};

/// Pearson's test of `observed` counts against category probabilities `probabilities` (summing to
/// 1; zero-probability categories must have zero counts, else p_value = 0). Categories whose
/// expected count is below `min_expected` are pooled, smallest first, into one bin (which is
/// kept if its pooled expectation reaches min_expected, else merged into the smallest regular
/// bin). dof = bins - 1.
inline chi_square_result chi_square_test(const std::vector<std::int64_t>& observed,
                                         const std::vector<double>& probabilities,
                                         double min_expected = 5.0) {
  if (observed.size() != probabilities.size()) {
    throw std::invalid_argument("chi_square_test: observed and probabilities differ in size");
  }
  double total = 0.0;
  for (const std::int64_t c : observed) {
    total += static_cast<double>(c);
  }
  chi_square_result result;
  std::vector<std::pair<double, double>> bins;  // (expected, observed)
  double pooled_expected = 0.0;
  double pooled_observed = 0.0;
  for (std::size_t i = 0; i < observed.size(); ++i) {
    const double e = probabilities[i] * total;
    const auto o = static_cast<double>(observed[i]);
    if (probabilities[i] == 0.0) {
      if (o != 0.0) {
        result.statistic = INFINITY;
        result.p_value = 0.0;
        return result;
      }
      continue;
    }
    if (e < min_expected) {
      pooled_expected += e;
      pooled_observed += o;
    } else {
      bins.emplace_back(e, o);
    }
  }
  if (pooled_expected > 0.0) {
    if (pooled_expected >= min_expected || bins.empty()) {
      bins.emplace_back(pooled_expected, pooled_observed);
    } else {
      auto smallest = std::min_element(bins.begin(), bins.end());
      smallest->first += pooled_expected;
      smallest->second += pooled_observed;
    }
  }
  for (const auto& [e, o] : bins) {
    result.statistic += (o - e) * (o - e) / e;
  }
  result.bins = static_cast<int>(bins.size());
  result.dof = result.bins - 1;
  result.p_value = result.dof > 0 ? chi_square_p_value(result.statistic, result.dof) : 1.0;
  return result;
}

/// Kolmogorov distribution tail Q_KS(lambda) = 2 sum_{j>=1} (-1)^{j-1} exp(-2 j^2 lambda^2).
inline double kolmogorov_q(double lambda) {
  if (lambda < 0.2) {
    return 1.0;
  }
  double sum = 0.0;
  for (int j = 1; j <= 200; ++j) {
    const double term = std::exp(-2.0 * j * j * lambda * lambda);
    sum += (j % 2 == 1 ? 2.0 : -2.0) * term;
    if (term < 1e-18) {
      break;
    }
  }
  return std::clamp(sum, 0.0, 1.0);
}

struct ks_result {
  double statistic = 0.0;  ///< sup |F_n - F|
  double p_value = 1.0;
};

/// One-sample KS test of `samples` (any order; sorted in place) against the continuous CDF `cdf`.
template <class Cdf>
ks_result ks_test(std::vector<double>& samples, Cdf cdf) {
  std::sort(samples.begin(), samples.end());
  const auto n = static_cast<double>(samples.size());
  double d = 0.0;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const double f = cdf(samples[i]);
    d = std::max({d, f - static_cast<double>(i) / n, static_cast<double>(i + 1) / n - f});
  }
  const double root = std::sqrt(n);
  return {d, kolmogorov_q((root + 0.12 + 0.11 / root) * d)};
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_STATISTICS_HPP
