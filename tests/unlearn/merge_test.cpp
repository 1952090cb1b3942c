// SPDX-License-Identifier: Apache-2.0
// unlearn/merge.hpp against independent oracles. OPCM: the reference loop re-implemented here from
// its definition (full JacobiSVD in double, T = U^T tau V and U T V^T by plain loops, the
// reference's lambda bookkeeping and global rescale), the projection property U_k^T tau' V_k = 0,
// k on planted singular values worked by hand (alpha edge cases, rank-deficient and zero merged
// vectors), the diagonal decision, the norm rescale, and every refusal leaving the state unchanged.
// MergeLock: an attention layer written here in double (q/k/v with biases, RoPE in either pairing
// at arbitrary positions, causal softmax with 1/sqrt(head_dim), GQA/MQA head mapping, output
// projection) gives the same output before and after the lock while the weights move far; a
// non-commuting A under RoPE is the negative control; averaging a locked model with a fine-tune of
// the original breaks the function far more than averaging the unlocked pair.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/merge.hpp>

#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using idx = reparam::index;
using reparam::matrix;
namespace unlearn = reparam::unlearn;
using unlearn::merge_role;
using unlearn::rope_pairing;

constexpr double eps = std::numeric_limits<double>::epsilon();
constexpr double eps_float = static_cast<double>(std::numeric_limits<float>::epsilon());

matrix<double> rand_mat(idx rows, idx cols, std::uint64_t salt, double scale = 1.0) {
  return scale * reparam::test::random_matrix<double>(rows, cols, reparam::test::test_seed(salt));
}

/// A random orthogonal n x n matrix (Q of a QR of a uniform random matrix; the law does not
/// matter here, only orthogonality).
Eigen::MatrixXd rand_orthogonal(idx n, std::uint64_t salt) {
  const Eigen::MatrixXd g = rand_mat(n, n, salt);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  return qr.householderQ();
}

double max_abs(const Eigen::MatrixXd& m) { return m.size() == 0 ? 0.0 : m.cwiseAbs().maxCoeff(); }

// ------------------------------------------------------------------------------------------------
// OPCM oracle: the reference's loop (tanganke/opcm opcm.py), written from its definition.
// ------------------------------------------------------------------------------------------------

struct opcm_oracle {
  std::vector<Eigen::MatrixXd> base;
  std::vector<bool> linear;
  double alpha = 0.5;
  bool zero_diagonal = false;  // true: zero the whole diagonal of T (fusion_bench's .diagonal())

  std::vector<Eigen::MatrixXd> merged;
  std::vector<double> norms;
  double previous_lambda = 1.0;
  std::vector<idx> last_k;

  static double global_distance(const std::vector<Eigen::MatrixXd>& a,
                                const std::vector<Eigen::MatrixXd>& b) {
    double total = 0.0;
    for (std::size_t t = 0; t < a.size(); ++t) {
      for (idx r = 0; r < a[t].rows(); ++r) {
        for (idx c = 0; c < a[t].cols(); ++c) {
          const double diff = a[t](r, c) - b[t](r, c);
          total += diff * diff;
        }
      }
    }
    return std::sqrt(total);
  }

  /// k = argmax of (cumsum(s) / sum(s) > alpha) as torch computes it: the first true index, and 0
  /// when none is true (also when sum(s) = 0, where every comparison is with NaN).
  idx split_rank(const Eigen::VectorXd& s) const {
    double total = 0.0;
    for (idx i = 0; i < s.size(); ++i) {
      total += s(i);
    }
    double running = 0.0;
    for (idx i = 0; i < s.size(); ++i) {
      running += s(i);
      if (running / total > alpha) {
        return i;
      }
    }
    return 0;
  }

  Eigen::MatrixXd cleaned(const Eigen::MatrixXd& tau_prev, const Eigen::MatrixXd& tau,
                          idx& k) const {
    const idx m = tau.rows();
    const idx n = tau.cols();
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(tau_prev,
                                                Eigen::ComputeFullU | Eigen::ComputeFullV);
    const Eigen::MatrixXd& u = svd.matrixU();  // [m, m]
    const Eigen::MatrixXd& v = svd.matrixV();  // [n, n]
    k = split_rank(svd.singularValues());
    Eigen::MatrixXd t = Eigen::MatrixXd::Zero(m, n);  // U^T tau V
    for (idx a = 0; a < m; ++a) {
      for (idx b = 0; b < n; ++b) {
        double sum = 0.0;
        for (idx r = 0; r < m; ++r) {
          for (idx c = 0; c < n; ++c) {
            sum += u(r, a) * tau(r, c) * v(c, b);
          }
        }
        t(a, b) = sum;
      }
    }
    if (zero_diagonal) {
      for (idx i = 0; i < std::min(m, n); ++i) {
        t(i, i) = 0.0;
      }
    }
    for (idx a = 0; a < k; ++a) {
      for (idx b = 0; b < k; ++b) {
        t(a, b) = 0.0;
      }
    }
    Eigen::MatrixXd out = Eigen::MatrixXd::Zero(m, n);  // U T V^T
    for (idx r = 0; r < m; ++r) {
      for (idx c = 0; c < n; ++c) {
        double sum = 0.0;
        for (idx a = 0; a < m; ++a) {
          for (idx b = 0; b < n; ++b) {
            sum += u(r, a) * t(a, b) * v(c, b);
          }
        }
        out(r, c) = sum;
      }
    }
    return out;
  }

  void add(const std::vector<Eigen::MatrixXd>& task) {
    last_k.assign(task.size(), 0);
    if (norms.empty()) {
      merged = task;
      norms.push_back(global_distance(task, base));
      return;
    }
    norms.push_back(global_distance(task, base));
    double mean = 0.0;
    for (double n : norms) {
      mean += n;
    }
    mean /= static_cast<double>(norms.size());
    double lambda = 1.0;  // "temporary value"
    std::vector<Eigen::MatrixXd> next(task.size());
    for (std::size_t i = 0; i < task.size(); ++i) {
      const Eigen::MatrixXd tau_prev = merged[i] - base[i];
      const Eigen::MatrixXd tau = task[i] - base[i];
      Eigen::MatrixXd update = tau;
      if (linear[i]) {
        update = cleaned(tau_prev, tau, last_k[i]);
      }
      next[i] = base[i] + (previous_lambda * tau_prev + update) / lambda;
    }
    const double merged_norm = global_distance(next, base);
    lambda *= merged_norm / mean;
    for (std::size_t i = 0; i < task.size(); ++i) {
      merged[i] = base[i] + (next[i] - base[i]) * (mean / merged_norm);
    }
    previous_lambda = lambda;
  }
};

/// Views of a list of matrices with their roles.
template <class Scalar>
std::vector<unlearn::merge_tensor<Scalar>> views(const std::vector<matrix<Scalar>>& tensors,
                                                 const std::vector<merge_role>& roles) {
  std::vector<unlearn::merge_tensor<Scalar>> out;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    out.push_back(unlearn::as_merge_tensor(tensors[i], roles[i]));
  }
  return out;
}

/// A model: 4 linear weights (tall, wide, square, and one large enough for BDCSVD's divide and
/// conquer path), a bias and a norm gain, stored RowMajor; `spread` scales the task vector.
struct toy_model {
  std::vector<matrix<double>> tensors;
  std::vector<merge_role> roles;
};

toy_model toy_base(std::uint64_t salt) {
  toy_model m;
  const idx shapes[][2] = {{6, 4}, {3, 7}, {5, 5}, {40, 24}, {1, 5}, {1, 4}};
  for (std::size_t i = 0; i < 6; ++i) {
    m.tensors.push_back(rand_mat(shapes[i][0], shapes[i][1], salt + i));
    m.roles.push_back(i < 4 ? merge_role::linear : merge_role::other);
  }
  return m;
}

std::vector<matrix<double>> toy_task(const toy_model& base, std::uint64_t salt, double spread) {
  std::vector<matrix<double>> out;
  for (std::size_t i = 0; i < base.tensors.size(); ++i) {
    const auto& w = base.tensors[i];
    out.push_back(w + rand_mat(w.rows(), w.cols(), salt + 31 * i, spread));
  }
  return out;
}

std::vector<Eigen::MatrixXd> as_col_major(const std::vector<matrix<double>>& tensors) {
  return {tensors.begin(), tensors.end()};
}

/// tau1 = U diag(s) V^T for a random U, V: planted singular values.
matrix<double> planted(const std::vector<double>& s, idx n, std::uint64_t salt) {
  const Eigen::MatrixXd u = rand_orthogonal(n, salt);
  const Eigen::MatrixXd v = rand_orthogonal(n, salt + 1);
  Eigen::VectorXd sigma = Eigen::VectorXd::Zero(n);
  for (std::size_t i = 0; i < s.size(); ++i) {
    sigma(static_cast<idx>(i)) = s[i];
  }
  return u * sigma.asDiagonal() * v.transpose();
}

TEST_CASE("opcm_merger matches the reference loop re-implemented from its definition",
          "[unlearn][opcm]") {
  CAPTURE(Catch::rngSeed());
  const double alpha = GENERATE(0.3, 0.5, 0.8);
  const bool zero_diagonal = GENERATE(false, true);
  CAPTURE(alpha, zero_diagonal);
  const toy_model base = toy_base(100);
  unlearn::opcm_merger<double> merger(views(base.tensors, base.roles), {alpha, zero_diagonal, {}});
  opcm_oracle oracle;
  oracle.base = as_col_major(base.tensors);
  for (merge_role r : base.roles) {
    oracle.linear.push_back(r == merge_role::linear);
  }
  oracle.alpha = alpha;
  oracle.zero_diagonal = zero_diagonal;
  const double spreads[] = {0.3, 0.1, 0.5, 0.2};
  for (int t = 0; t < 4; ++t) {
    CAPTURE(t);
    const auto task = toy_task(base, 1000 + 100 * static_cast<std::uint64_t>(t), spreads[t]);
    const unlearn::opcm_report report = merger.add(views(task, base.roles));
    oracle.add(as_col_major(task));
    REQUIRE(report.model == t + 1);
    const auto merged = merger.make_merged();
    double worst = 0.0;
    for (std::size_t i = 0; i < task.size(); ++i) {
      CAPTURE(i);
      worst = std::max(worst, max_abs(Eigen::MatrixXd(merged[i]) - oracle.merged[i]));
      CHECK(report.tensors[i].protected_rank == oracle.last_k[i]);
      // tau = removed + tau' with removed orthogonal to tau' (the zeroed entries of T).
      const auto& tr = report.tensors[i];
      CHECK(std::abs(tr.removed_norm * tr.removed_norm + tr.projected_norm * tr.projected_norm -
                     tr.task_norm * tr.task_norm) <= 1e-12 * tr.task_norm * tr.task_norm);
      CHECK(tr.protected_share <= alpha);
    }
    // Entries are O(1) and the merged vector is a sum of at most 4 O(1) tensors: the two
    // evaluation orders differ by a few hundred ulps at most.
    CAPTURE(worst);
    REQUIRE(worst <= 1e-12);
  }
}

TEST_CASE("opcm_merger in float equals the double merger to float rounding", "[unlearn][opcm]") {
  const toy_model base = toy_base(200);
  std::vector<matrix<float>> base_f;
  for (const auto& w : base.tensors) {
    base_f.push_back(w.cast<float>());
  }
  unlearn::opcm_merger<float> merger_f(views(base_f, base.roles));
  std::vector<matrix<double>> base_d;  // the float values, held in double
  for (const auto& w : base_f) {
    base_d.push_back(w.cast<double>());
  }
  unlearn::opcm_merger<double> merger_d(views(base_d, base.roles));
  for (int t = 0; t < 3; ++t) {
    const auto task = toy_task(base, 2000 + 100 * static_cast<std::uint64_t>(t), 0.2);
    std::vector<matrix<float>> task_f;
    std::vector<matrix<double>> task_d;
    for (const auto& w : task) {
      task_f.push_back(w.cast<float>());
      task_d.push_back(task_f.back().cast<double>());
    }
    const auto rf = merger_f.add(views(task_f, base.roles));
    const auto rd = merger_d.add(views(task_d, base.roles));
    REQUIRE(rf.scale == rd.scale);  // same double arithmetic on the same values
    const auto mf = merger_f.make_merged();
    const auto md = merger_d.make_merged();
    for (std::size_t i = 0; i < mf.size(); ++i) {
      // One rounding of a double result: half an ulp of values below ~4.
      REQUIRE(max_abs(mf[i].cast<double>() - md[i]) <= 4.0 * eps_float);
    }
  }
}

TEST_CASE("opcm_merger returns the first model itself and the base before any model",
          "[unlearn][opcm]") {
  const toy_model base = toy_base(300);
  std::vector<matrix<float>> base_f;
  for (const auto& w : base.tensors) {
    base_f.push_back(w.cast<float>());
  }
  unlearn::opcm_merger<float> merger(views(base_f, base.roles));
  REQUIRE(merger.models() == 0);
  REQUIRE(merger.mean_task_norm() == 0.0);
  auto before = merger.make_merged();
  for (std::size_t i = 0; i < before.size(); ++i) {
    REQUIRE(before[i] == base_f[i]);
  }
  const auto task = toy_task(base, 3000, 0.4);
  std::vector<matrix<float>> task_f;
  for (const auto& w : task) {
    task_f.push_back(w.cast<float>());
  }
  const auto report = merger.add(views(task_f, base.roles));
  REQUIRE(report.model == 1);
  REQUIRE(report.scale == 1.0);
  REQUIRE(report.merged_norm == report.task_norm);
  for (const auto& t : report.tensors) {
    REQUIRE(t.protected_rank == 0);
    REQUIRE(t.removed_norm == 0.0);
  }
  // W0 + 1 * (W1 - W0) in double: the float difference is exact in double, so W1 comes back bit
  // for bit.
  const auto merged = merger.make_merged();
  for (std::size_t i = 0; i < merged.size(); ++i) {
    REQUIRE(merged[i] == task_f[i]);
  }
}

TEST_CASE("opcm_merger removes exactly the leading k singular pairs of the merged task vector",
          "[unlearn][opcm]") {
  // tau1 = U diag(4, 3, 2, 1) V^T: cumsum(s) / sum(s) = 0.4, 0.7, 0.9, 1.0. The first index
  // exceeding alpha, worked by hand: alpha 0.35 -> 0, 0.5 -> 1, 0.69 -> 1, 0.71 -> 2, 0.95 -> 3;
  // alpha = 1 (nothing exceeds) -> k = rank = 4.
  struct expectation {
    double alpha;
    idx k;
    double share;
  };
  const expectation cases[] = {{0.35, 0, 0.0}, {0.5, 1, 0.4},  {0.69, 1, 0.4},
                               {0.71, 2, 0.7}, {0.95, 3, 0.9}, {1.0, 4, 1.0}};
  const idx n = 4;
  const matrix<double> w0 = rand_mat(n, n, 400);
  const matrix<double> tau1 = planted({4.0, 3.0, 2.0, 1.0}, n, 401);
  const matrix<double> tau2 = rand_mat(n, n, 402);
  const matrix<double> w1 = w0 + tau1;
  const matrix<double> w2 = w0 + tau2;
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(tau1),
                                              Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::MatrixXd& u = svd.matrixU();
  const Eigen::MatrixXd& v = svd.matrixV();
  for (const auto& e : cases) {
    CAPTURE(e.alpha);
    unlearn::opcm_merger<double> merger({unlearn::as_merge_tensor(w0, merge_role::linear)},
                                        {e.alpha, false, {}});
    merger.add({unlearn::as_merge_tensor(w1, merge_role::linear)});
    const auto report = merger.add({unlearn::as_merge_tensor(w2, merge_role::linear)});
    const auto& t = report.tensors[0];
    REQUIRE(t.protected_rank == e.k);
    REQUIRE(t.merged_rank == n);
    REQUIRE(t.protected_share == Approx(e.share).margin(1e-12));
    // S_2 - S_1 = tau2': its coordinates in tau1's singular basis.
    const Eigen::MatrixXd projected = merger.task_sum(0) - tau1;
    const Eigen::MatrixXd t_new = u.transpose() * projected * v;
    const Eigen::MatrixXd t_old = u.transpose() * Eigen::MatrixXd(tau2) * v;
    for (idx a = 0; a < n; ++a) {
      for (idx b = 0; b < n; ++b) {
        CAPTURE(a, b);
        const double expected = (a < e.k && b < e.k) ? 0.0 : t_old(a, b);
        REQUIRE(std::abs(t_new(a, b) - expected) <= 1e-13);
      }
    }
  }
}

TEST_CASE(
    "opcm_merger protects only determined directions of a rank-deficient or zero merged "
    "vector",
    "[unlearn][opcm]") {
  const idx n = 5;
  const matrix<double> w0 = rand_mat(n, n, 500);
  const matrix<double> tau1 = planted({3.0, 1.0}, n, 501);  // rank 2
  const matrix<double> tau2 = rand_mat(n, n, 502);
  const matrix<double> w1 = w0 + tau1;
  const matrix<double> w2 = w0 + tau2;
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(tau1),
                                              Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd u2 = svd.matrixU().leftCols(2);
  const Eigen::MatrixXd v2 = svd.matrixV().leftCols(2);

  SECTION("alpha = 1 protects the rank-2 span, not the undetermined null directions") {
    const bool zero_diagonal = GENERATE(false, true);
    // The planted null directions come out at ~1e-15 = O(n eps sigma_max), the size of the
    // default tolerance; a wider one makes the rank unambiguous.
    unlearn::opcm_merger<double> merger({unlearn::as_merge_tensor(w0, merge_role::linear)},
                                        {1.0, zero_diagonal, {1e-10}});
    merger.add({unlearn::as_merge_tensor(w1, merge_role::linear)});
    const auto report = merger.add({unlearn::as_merge_tensor(w2, merge_role::linear)});
    REQUIRE(report.tensors[0].merged_rank == 2);
    REQUIRE(report.tensors[0].protected_rank == 2);
    // tau2' = tau2 - U_2 U_2^T tau2 V_2 V_2^T, worked out independently.
    const Eigen::MatrixXd expected =
        Eigen::MatrixXd(tau2) - u2 * (u2.transpose() * Eigen::MatrixXd(tau2) * v2) * v2.transpose();
    REQUIRE(max_abs(merger.task_sum(0) - tau1 - expected) <= 1e-13);
  }
  SECTION("a tensor the first model left at the base takes the next task vector whole") {
    const matrix<double> other0 = rand_mat(3, 4, 503);
    const matrix<double> other2 = other0 + rand_mat(3, 4, 504);
    unlearn::opcm_merger<double> merger({unlearn::as_merge_tensor(w0, merge_role::linear),
                                         unlearn::as_merge_tensor(other0, merge_role::linear)});
    merger.add({unlearn::as_merge_tensor(w1, merge_role::linear),
                unlearn::as_merge_tensor(other0, merge_role::linear)});
    const auto report = merger.add({unlearn::as_merge_tensor(w2, merge_role::linear),
                                    unlearn::as_merge_tensor(other2, merge_role::linear)});
    REQUIRE(report.tensors[1].merged_rank == 0);
    REQUIRE(report.tensors[1].protected_rank == 0);
    REQUIRE(max_abs(merger.task_sum(1) - (other2 - other0)) == 0.0);
  }
}

TEST_CASE("opcm_merger keeps the diagonal beyond k by default and removes it on request",
          "[unlearn][opcm]") {
  // The reference's T.diag().fill_(0) fills a copy: as executed, U^T tau' V keeps T_ii for i >= k.
  const idx n = 6;
  const matrix<double> w0 = rand_mat(n, n, 600);
  // cumsum(s) / sum(s) = 6/21, 11/21, ...: the first index above 0.5 is 1, so k = 1.
  const idx k = 1;
  const matrix<double> tau1 = planted({6.0, 5.0, 4.0, 3.0, 2.0, 1.0}, n, 601);
  const matrix<double> tau2 = rand_mat(n, n, 602);
  const matrix<double> w1 = w0 + tau1;
  const matrix<double> w2 = w0 + tau2;
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(tau1),
                                              Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::MatrixXd& u = svd.matrixU();
  const Eigen::MatrixXd& v = svd.matrixV();
  const Eigen::MatrixXd t2 = u.transpose() * Eigen::MatrixXd(tau2) * v;

  Eigen::MatrixXd projected[2];
  for (int mode = 0; mode < 2; ++mode) {
    unlearn::opcm_merger<double> merger({unlearn::as_merge_tensor(w0, merge_role::linear)},
                                        {0.5, mode == 1, {}});
    merger.add({unlearn::as_merge_tensor(w1, merge_role::linear)});
    const auto report = merger.add({unlearn::as_merge_tensor(w2, merge_role::linear)});
    REQUIRE(report.tensors[0].protected_rank == k);
    projected[mode] = merger.task_sum(0) - tau1;
  }
  const Eigen::MatrixXd kept = u.transpose() * projected[0] * v;
  const Eigen::MatrixXd zeroed = u.transpose() * projected[1] * v;
  Eigen::MatrixXd diagonal_part = Eigen::MatrixXd::Zero(n, n);
  // The control: there is something to keep or remove (T_ii ~ N(0, 1/3) each).
  REQUIRE(t2.diagonal().tail(n - k).norm() > 0.1);
  for (idx i = k; i < n; ++i) {
    CAPTURE(i);
    REQUIRE(std::abs(kept(i, i) - t2(i, i)) <= 1e-13);
    REQUIRE(std::abs(zeroed(i, i)) <= 1e-13);
    diagonal_part += t2(i, i) * u.col(i) * v.col(i).transpose();
  }
  // The two modes differ by exactly sum_{i >= k} (u_i^T tau2 v_i) u_i v_i^T.
  REQUIRE(max_abs(projected[0] - projected[1] - diagonal_part) <= 1e-13);
}

TEST_CASE("opcm_merger rescales the merged task vector to the mean task-vector norm",
          "[unlearn][opcm]") {
  const toy_model base = toy_base(700);
  unlearn::opcm_merger<double> merger(views(base.tensors, base.roles));
  const double spreads[] = {0.5, 0.05, 0.3, 1.0};
  double norm_sum = 0.0;
  for (int t = 0; t < 4; ++t) {
    const auto task = toy_task(base, 7000 + 100 * static_cast<std::uint64_t>(t), spreads[t]);
    double tau_squared = 0.0;
    for (std::size_t i = 0; i < task.size(); ++i) {
      tau_squared += (task[i] - base.tensors[i]).squaredNorm();
    }
    norm_sum += std::sqrt(tau_squared);
    const double mean = norm_sum / static_cast<double>(t + 1);
    const auto report = merger.add(views(task, base.roles));
    REQUIRE(report.task_norm == Approx(std::sqrt(tau_squared)).epsilon(1e-14));
    REQUIRE(report.mean_task_norm == Approx(mean).epsilon(1e-14));
    const auto merged = merger.make_merged();
    double distance_squared = 0.0;
    double s_squared = 0.0;
    for (std::size_t i = 0; i < merged.size(); ++i) {
      distance_squared += (merged[i] - base.tensors[i]).squaredNorm();
      s_squared += merger.task_sum(static_cast<idx>(i)).squaredNorm();
      // W_t - W0 is parallel to S_t.
      REQUIRE(max_abs(merged[i] - base.tensors[i] -
                      report.scale * merger.task_sum(static_cast<idx>(i))) <= 1e-14);
    }
    REQUIRE(std::sqrt(distance_squared) == Approx(mean).epsilon(1e-13));
    REQUIRE(report.scale == Approx(mean / std::sqrt(s_squared)).epsilon(1e-14));
    REQUIRE(report.lambda * report.scale == Approx(1.0).epsilon(1e-14));
  }
}

TEST_CASE("opcm_merger gives W0 for zero task vectors and refuses a vanished merged vector",
          "[unlearn][opcm]") {
  const matrix<double> w0 = rand_mat(4, 4, 800);
  const matrix<double> b0 = rand_mat(1, 4, 801);
  const std::vector<merge_role> roles = {merge_role::linear, merge_role::other};
  SECTION("every task vector zero: the merged model is the base") {
    unlearn::opcm_merger<double> merger(views<double>({w0, b0}, roles));
    merger.add(views<double>({w0, b0}, roles));
    const auto report = merger.add(views<double>({w0, b0}, roles));
    REQUIRE(report.scale == 1.0);
    REQUIRE(report.mean_task_norm == 0.0);
    const auto merged = merger.make_merged();
    REQUIRE(merged[0] == w0);
    REQUIRE(merged[1] == b0);
  }
  SECTION("a task that cancels the merged one (k = 0 at tiny alpha) is refused") {
    const matrix<double> tau_w = rand_mat(4, 4, 802);
    const matrix<double> tau_b = rand_mat(1, 4, 803);
    const matrix<double> w1 = w0 + tau_w, b1 = b0 + tau_b;
    const matrix<double> w2 = w0 - tau_w, b2 = b0 - tau_b;
    unlearn::opcm_merger<double> merger(views<double>({w0, b0}, roles), {1e-9, false, {}});
    merger.add(views<double>({w1, b1}, roles));
    const auto before = merger.make_merged();
    REQUIRE_THROWS_WITH(merger.add(views<double>({w2, b2}, roles)),
                        Contains("unlearn::opcm_merger::add") && Contains("vanished"));
    REQUIRE(merger.models() == 1);
    const auto after = merger.make_merged();
    REQUIRE(after[0] == before[0]);
    REQUIRE(after[1] == before[1]);
  }
}

TEST_CASE("opcm_merger refuses bad input by name and leaves its state unchanged",
          "[unlearn][opcm]") {
  const matrix<float> w0 = reparam::test::random_matrix<float>(4, 3, reparam::test::test_seed(900));
  const matrix<float> b0 = reparam::test::random_matrix<float>(1, 4, reparam::test::test_seed(901));
  const std::vector<merge_role> roles = {merge_role::linear, merge_role::other};
  const std::vector<matrix<float>> base_tensors = {w0, b0};
  const auto base = views(base_tensors, roles);

  SECTION("constructor") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (double alpha : {0.0, -0.5, 1.5, nan}) {
      CAPTURE(alpha);
      REQUIRE_THROWS_WITH(unlearn::opcm_merger<float>(base, {alpha, false, {}}),
                          Contains("unlearn::opcm_merger") && Contains("params.alpha"));
    }
    REQUIRE_THROWS_WITH(unlearn::opcm_merger<float>(base, {0.5, false, {1.5}}),
                        Contains("unlearn::opcm_merger") && Contains("policy.relative_tolerance"));
    REQUIRE_THROWS_WITH(unlearn::opcm_merger<float>(std::vector<unlearn::merge_tensor<float>>{}),
                        Contains("unlearn::opcm_merger") && Contains("base has no tensors"));
    matrix<float> bad = b0;
    bad(0, 2) = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(unlearn::opcm_merger<float>(views<float>({w0, bad}, roles)),
                        Contains("unlearn::opcm_merger") && Contains("base[1]") &&
                            Contains("non-finite") && Contains("(0, 2)"));
    const matrix<float> empty(0, 3);
    REQUIRE_THROWS_WITH(unlearn::opcm_merger<float>(views<float>({empty, b0}, roles)),
                        Contains("base[0] is empty"));
  }

  SECTION("add") {
    unlearn::opcm_merger<float> merger(base);
    const matrix<float> w1 = w0.array() + 0.5f;
    const matrix<float> b1 = b0.array() - 0.25f;
    merger.add(views<float>({w1, b1}, roles));
    const auto before = merger.make_merged();
    const matrix<double> sum_before = merger.task_sum(0);
    const double scale_before = merger.scale();
    const auto unchanged = [&] {
      REQUIRE(merger.models() == 1);
      REQUIRE(merger.scale() == scale_before);
      REQUIRE(merger.task_sum(0) == sum_before);
      const auto after = merger.make_merged();
      REQUIRE(after[0] == before[0]);
      REQUIRE(after[1] == before[1]);
    };
    const matrix<float> w2 = w0.array() - 0.5f;
    REQUIRE_THROWS_WITH(merger.add(views<float>({w2}, {merge_role::linear})),
                        Contains("unlearn::opcm_merger::add") && Contains("model has 1 tensors") &&
                            Contains("base has 2"));
    unchanged();
    REQUIRE_THROWS_WITH(merger.add(views<float>({w2, b1}, {merge_role::other, merge_role::other})),
                        Contains("unlearn::opcm_merger::add") &&
                            Contains("model[0] is marked other") &&
                            Contains("base[0] is marked linear"));
    unchanged();
    const matrix<float> wrong_shape = w2.transpose();
    REQUIRE_THROWS_WITH(merger.add(views<float>({wrong_shape, b1}, roles)),
                        Contains("unlearn::opcm_merger::add") && Contains("model[0] is 3 x 4") &&
                            Contains("base[0] is 4 x 3"));
    unchanged();
    matrix<float> nan_bias = b1;
    nan_bias(0, 1) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(merger.add(views<float>({w2, nan_bias}, roles)),
                        Contains("unlearn::opcm_merger::add") && Contains("model[1]") &&
                            Contains("non-finite") && Contains("(0, 1)"));
    unchanged();
  }

  SECTION("merged and task_sum") {
    unlearn::opcm_merger<float> merger(base);
    matrix<float> out = matrix<float>::Constant(3, 4, 7.0f);
    const matrix<float> copy = out;
    REQUIRE_THROWS_WITH(merger.merged(0, out),
                        Contains("unlearn::opcm_merger::merged") && Contains("out is 3 x 4"));
    REQUIRE(out == copy);
    REQUIRE_THROWS_WITH(merger.merged(2, out), Contains("tensor 2 is not in [0, 2)"));
    REQUIRE_THROWS_WITH(merger.task_sum(-1), Contains("unlearn::opcm_merger::task_sum"));
  }
}

// ------------------------------------------------------------------------------------------------
// MergeLock oracle: one attention layer in double, written from its definition.
// ------------------------------------------------------------------------------------------------

struct attention_weights {
  Eigen::MatrixXd wq, wk, wv, wo;  // [out, in]
  Eigen::VectorXd bq, bk, bv;      // empty: no bias
};

/// The rotated coordinates (a, b) of frequency pair i in a head of size hd.
std::pair<idx, idx> oracle_pair(rope_pairing pairing, idx hd, idx i) {
  return pairing == rope_pairing::interleaved ? std::pair<idx, idx>{2 * i, 2 * i + 1}
                                              : std::pair<idx, idx>{i, i + hd / 2};
}

/// Rotates every head of rows [T, heads * hd] in place: position first + t, angle pos *
/// 10000^(-2i / hd) on pair i, (x_a, x_b) -> (x_a cos - x_b sin, x_a sin + x_b cos).
void oracle_rope(Eigen::MatrixXd& rows, idx hd, rope_pairing pairing, idx first) {
  if (pairing == rope_pairing::none) {
    return;
  }
  for (idx t = 0; t < rows.rows(); ++t) {
    const auto pos = static_cast<double>(first + t);
    for (idx head = 0; head < rows.cols() / hd; ++head) {
      for (idx i = 0; i < hd / 2; ++i) {
        const double angle =
            pos * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        const auto [a, b] = oracle_pair(pairing, hd, i);
        const double xa = rows(t, head * hd + a);
        const double xb = rows(t, head * hd + b);
        rows(t, head * hd + a) = xa * std::cos(angle) - xb * std::sin(angle);
        rows(t, head * hd + b) = xa * std::sin(angle) + xb * std::cos(angle);
      }
    }
  }
}

Eigen::MatrixXd oracle_attention(const Eigen::MatrixXd& x, const attention_weights& w,
                                 const unlearn::attention_layout& layout, rope_pairing rope,
                                 idx first_position) {
  const idx count = x.rows();
  const idx hd = layout.head_dim;
  Eigen::MatrixXd q = x * w.wq.transpose();
  Eigen::MatrixXd k = x * w.wk.transpose();
  Eigen::MatrixXd v = x * w.wv.transpose();
  if (w.bq.size() != 0) {
    q.rowwise() += w.bq.transpose();
  }
  if (w.bk.size() != 0) {
    k.rowwise() += w.bk.transpose();
  }
  if (w.bv.size() != 0) {
    v.rowwise() += w.bv.transpose();
  }
  oracle_rope(q, hd, rope, first_position);
  oracle_rope(k, hd, rope, first_position);
  Eigen::MatrixXd heads = Eigen::MatrixXd::Zero(count, layout.n_heads * hd);
  const idx group = layout.n_heads / layout.n_kv_heads;
  for (idx h = 0; h < layout.n_heads; ++h) {
    const idx g = h / group;
    for (idx t = 0; t < count; ++t) {
      std::vector<double> p(static_cast<std::size_t>(t + 1));
      double largest = -std::numeric_limits<double>::infinity();
      for (idx j = 0; j <= t; ++j) {
        double dot = 0.0;
        for (idx c = 0; c < hd; ++c) {
          dot += q(t, h * hd + c) * k(j, g * hd + c);
        }
        p[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(hd));
        largest = std::max(largest, p[static_cast<std::size_t>(j)]);
      }
      double total = 0.0;
      for (double& s : p) {
        s = std::exp(s - largest);
        total += s;
      }
      for (idx j = 0; j <= t; ++j) {
        for (idx c = 0; c < hd; ++c) {
          heads(t, h * hd + c) += p[static_cast<std::size_t>(j)] / total * v(j, g * hd + c);
        }
      }
    }
  }
  return heads * w.wo.transpose();
}

/// Random attention weights scaled so the scores are O(1) (no saturated softmax).
attention_weights random_attention(const unlearn::attention_layout& layout, idx d, bool biases,
                                   std::uint64_t salt) {
  const idx q_dim = layout.n_heads * layout.head_dim;
  const idx kv_dim = layout.n_kv_heads * layout.head_dim;
  const double s = 1.0 / std::sqrt(static_cast<double>(d));
  attention_weights w;
  w.wq = rand_mat(q_dim, d, salt, 2.0 * s);
  w.wk = rand_mat(kv_dim, d, salt + 1, 2.0 * s);
  w.wv = rand_mat(kv_dim, d, salt + 2, 2.0 * s);
  w.wo = rand_mat(d, q_dim, salt + 3, s);
  if (biases) {
    w.bq = rand_mat(q_dim, 1, salt + 4, 0.5);
    w.bk = rand_mat(kv_dim, 1, salt + 5, 0.5);
    w.bv = rand_mat(kv_dim, 1, salt + 6, 0.5);
  }
  return w;
}

/// Copies of the weights in Scalar (RowMajor) and the lock applied to them.
template <class Scalar>
struct stored_attention {
  matrix<Scalar> wq, wk, wv, wo;
  reparam::vector<Scalar> bq, bk, bv;

  explicit stored_attention(const attention_weights& w)
      : wq(w.wq.cast<Scalar>()),
        wk(w.wk.cast<Scalar>()),
        wv(w.wv.cast<Scalar>()),
        wo(w.wo.cast<Scalar>()),
        bq(w.bq.cast<Scalar>()),
        bk(w.bk.cast<Scalar>()),
        bv(w.bv.cast<Scalar>()) {}

  unlearn::qkv_biases<Scalar> biases() {
    return {{bq.size() ? bq.data() : nullptr, bq.size()},
            {bk.size() ? bk.data() : nullptr, bk.size()},
            {bv.size() ? bv.data() : nullptr, bv.size()}};
  }

  unlearn::lock_report lock(const unlearn::attention_layout& layout,
                            const unlearn::lock_params& params) {
    return unlearn::lock_attention(wq, wk, wv, wo, layout, params, biases());
  }

  attention_weights as_double() const {
    return {wq.template cast<double>(), wk.template cast<double>(), wv.template cast<double>(),
            wo.template cast<double>(), bq.template cast<double>(), bk.template cast<double>(),
            bv.template cast<double>()};
  }
};

double relative_error(const Eigen::MatrixXd& actual, const Eigen::MatrixXd& expected) {
  return max_abs(actual - expected) / max_abs(expected);
}

struct lock_case {
  const char* name;
  unlearn::attention_layout layout;
  bool biases;
};

const lock_case lock_cases[] = {
    {"MHA without RoPE", {4, 4, 6, rope_pairing::none}, true},
    {"GQA with interleaved RoPE", {4, 2, 8, rope_pairing::interleaved}, true},
    {"MQA with half_split RoPE", {4, 1, 8, rope_pairing::half_split}, true},
};

TEST_CASE("lock_attention keeps the attention output while moving the weights far (double)",
          "[unlearn][mergelock]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 16;
  const idx tokens = 9;
  const idx first_position = 5;
  for (const auto& c : lock_cases) {
    CAPTURE(c.name);
    const attention_weights w = random_attention(c.layout, d, c.biases, 1100);
    const Eigen::MatrixXd x = rand_mat(tokens, d, 1110);
    const Eigen::MatrixXd before = oracle_attention(x, w, c.layout, c.layout.rope, first_position);
    stored_attention<double> locked(w);
    const unlearn::lock_params params{10.0, 0xC0FFEEu};
    const unlearn::lock_report report = locked.lock(c.layout, params);
    const Eigen::MatrixXd after =
        oracle_attention(x, locked.as_double(), c.layout, c.layout.rope, first_position);
    double kappa = 1.0;
    for (std::size_t g = 0; g < report.qk_condition.size(); ++g) {
      REQUIRE(report.qk_condition[g] >= 1.0);
      REQUIRE(report.qk_condition[g] <= params.kappa_max);
      REQUIRE(report.vo_condition[g] <= params.kappa_max);
      kappa = std::max(kappa, report.qk_condition[g] * report.vo_condition[g]);
    }
    const double error = relative_error(after, before);
    CAPTURE(error, kappa, report.wq_change, report.wk_change, report.wv_change, report.wo_change,
            report.inverse_residual);
    // Rounding the locked weights perturbs q^T k and W_O v by ~kappa eps relative, kappa the
    // product of the QK and VO condition numbers (the weights carry A^T, A^-1, B, B^-1). Measured
    // over 200 seeds: at most 1.5 kappa eps; 16 kappa eps is ~3e-13 here.
    REQUIRE(error <= 16.0 * kappa * eps);
    REQUIRE(report.inverse_residual <=
            16.0 * static_cast<double>(c.layout.head_dim) * params.kappa_max * eps);
    // The weights themselves move by order 1.
    REQUIRE(report.wq_change > 0.5);
    REQUIRE(report.wk_change > 0.5);
    REQUIRE(report.wv_change > 0.5);
    REQUIRE(report.wo_change > 0.5);
    REQUIRE(report.bq_change > 0.5);
    REQUIRE(report.bk_change > 0.5);
    REQUIRE(report.bv_change > 0.5);
    // The reported changes are those of the stored weights.
    REQUIRE(report.wq_change ==
            Approx((locked.wq - matrix<double>(w.wq)).norm() / w.wq.norm()).epsilon(1e-12));
    REQUIRE(report.wo_change ==
            Approx((locked.wo - matrix<double>(w.wo)).norm() / w.wo.norm()).epsilon(1e-12));
  }
}

TEST_CASE("lock_attention on float weights keeps the output to float rounding times kappa",
          "[unlearn][mergelock]") {
  const idx d = 32;
  const idx tokens = 7;
  for (const auto& c : lock_cases) {
    CAPTURE(c.name);
    const attention_weights w = random_attention(c.layout, d, c.biases, 1200);
    const Eigen::MatrixXd x = rand_mat(tokens, d, 1210);
    stored_attention<float> original(w);
    const Eigen::MatrixXd before =
        oracle_attention(x, original.as_double(), c.layout, c.layout.rope, 0);
    stored_attention<float> locked = original;
    const unlearn::lock_params params{10.0, 77};
    const unlearn::lock_report report = locked.lock(c.layout, params);
    const Eigen::MatrixXd after =
        oracle_attention(x, locked.as_double(), c.layout, c.layout.rope, 0);
    double kappa = 1.0;
    for (std::size_t g = 0; g < report.qk_condition.size(); ++g) {
      kappa = std::max(kappa, report.qk_condition[g] * report.vo_condition[g]);
    }
    const double error = relative_error(after, before);
    CAPTURE(error, kappa);
    // Same argument as in double with eps(float): each stored entry is rounded once (measured:
    // at most 0.11 kappa eps over 200 seeds; the oracle runs in double).
    REQUIRE(error <= 16.0 * kappa * eps_float);
    REQUIRE(error > 0.0);  // the weights really were rewritten and rounded
    REQUIRE(report.wq_change > 0.5);
    REQUIRE(report.wv_change > 0.5);
  }
}

TEST_CASE("make_lock_matrices: RoPE-commuting A, bounded condition, exact inverses, seeded",
          "[unlearn][mergelock]") {
  const idx hd = 8;
  for (rope_pairing pairing :
       {rope_pairing::none, rope_pairing::interleaved, rope_pairing::half_split}) {
    CAPTURE(static_cast<int>(pairing));
    const unlearn::attention_layout layout{6, 3, hd, pairing};
    const unlearn::lock_params params{50.0, 12345};
    const unlearn::lock_matrices m = unlearn::make_lock_matrices(layout, params);
    REQUIRE(m.qk.size() == 3);
    for (std::size_t g = 0; g < 3; ++g) {
      CAPTURE(g);
      for (int which = 0; which < 2; ++which) {
        const Eigen::MatrixXd a = which == 0 ? m.qk[g] : m.vo[g];
        const Eigen::MatrixXd a_inv = which == 0 ? m.qk_inverse[g] : m.vo_inverse[g];
        const double reported = which == 0 ? m.qk_condition[g] : m.vo_condition[g];
        const Eigen::JacobiSVD<Eigen::MatrixXd> svd(a);
        const Eigen::VectorXd& s = svd.singularValues();
        REQUIRE(s(0) / s(hd - 1) == Approx(reported).epsilon(1e-10));
        REQUIRE(reported <= params.kappa_max);
        REQUIRE(s(0) <= std::sqrt(params.kappa_max) * (1 + 1e-12));
        REQUIRE(s(hd - 1) >= 1.0 / std::sqrt(params.kappa_max) * (1 - 1e-12));
        REQUIRE(max_abs(a * a_inv - Eigen::MatrixXd::Identity(hd, hd)) <= 1e-13);
        REQUIRE(max_abs(a_inv * a - Eigen::MatrixXd::Identity(hd, hd)) <= 1e-13);
      }
      // A commutes with the RoPE rotation of every position (checked at a few, in the oracle's
      // own coordinates) exactly when it was drawn for that pairing.
      for (rope_pairing rope : {rope_pairing::interleaved, rope_pairing::half_split}) {
        double worst = 0.0;
        for (idx pos : {1, 7, 100, 4095}) {
          Eigen::MatrixXd r(hd, hd);  // row j = (R e_j)^T, so r = R^T (a rotation too)
          for (idx j = 0; j < hd; ++j) {
            Eigen::MatrixXd row = Eigen::MatrixXd::Identity(hd, hd).row(j);
            oracle_rope(row, hd, rope, pos);
            r.row(j) = row;
          }
          worst = std::max(worst, max_abs(m.qk[g] * r - r * m.qk[g]));
        }
        if (rope == pairing) {
          REQUIRE(worst <= 1e-13);
        } else {
          REQUIRE(worst > 1e-3);
        }
      }
    }
    const unlearn::lock_matrices again = unlearn::make_lock_matrices(layout, params);
    const unlearn::lock_matrices other = unlearn::make_lock_matrices(layout, {50.0, 12346});
    REQUIRE(again.qk[1] == m.qk[1]);
    REQUIRE(again.vo[2] == m.vo[2]);
    REQUIRE(max_abs(other.vo[0] - m.vo[0]) > 1e-3);
  }
}

TEST_CASE("a lock that does not commute with RoPE changes the output: the negative control",
          "[unlearn][mergelock]") {
  const idx d = 16;
  const attention_weights w =
      random_attention({4, 2, 8, rope_pairing::interleaved}, d, false, 1300);
  const Eigen::MatrixXd x = rand_mat(8, d, 1310);
  const Eigen::MatrixXd before =
      oracle_attention(x, w, {4, 2, 8, rope_pairing::interleaved}, rope_pairing::interleaved, 3);
  struct variant {
    rope_pairing drawn_for;
    double min_error;
  };
  // Drawn for the model's pairing (control: unchanged), for no RoPE (general A) and for the other
  // pairing: the last two must change the RoPE model's output.
  for (const variant& v :
       {variant{rope_pairing::interleaved, 0.0}, variant{rope_pairing::none, 1e-2},
        variant{rope_pairing::half_split, 1e-2}}) {
    CAPTURE(static_cast<int>(v.drawn_for));
    stored_attention<double> locked(w);
    locked.lock({4, 2, 8, v.drawn_for}, {10.0, 99});
    const Eigen::MatrixXd after = oracle_attention(
        x, locked.as_double(), {4, 2, 8, rope_pairing::interleaved}, rope_pairing::interleaved, 3);
    const double error = relative_error(after, before);
    CAPTURE(error);
    if (v.min_error == 0.0) {
      REQUIRE(error <= 1e-11);
    } else {
      REQUIRE(error > v.min_error);
    }
  }
  // Without RoPE in the model a general A is fine: the evaluation, not the lock, is the control.
  stored_attention<double> locked(w);
  locked.lock({4, 2, 8, rope_pairing::none}, {10.0, 99});
  const Eigen::MatrixXd plain_before =
      oracle_attention(x, w, {4, 2, 8, rope_pairing::none}, rope_pairing::none, 3);
  const Eigen::MatrixXd plain_after =
      oracle_attention(x, locked.as_double(), {4, 2, 8, rope_pairing::none}, rope_pairing::none, 3);
  REQUIRE(relative_error(plain_after, plain_before) <= 1e-11);
}

TEST_CASE("averaging a locked model with a fine-tune of the original breaks the function",
          "[unlearn][mergelock]") {
  // Toy of MergeLock's claim: the unlocked pair (W, W + delta) averages to a model close to both;
  // the locked pair (lock(W), W + delta) computes the same two functions but averages to garbage.
  const unlearn::attention_layout layout{4, 2, 8, rope_pairing::interleaved};
  const idx d = 16;
  const attention_weights w = random_attention(layout, d, true, 1400);
  attention_weights tuned = w;  // an independent fine-tune: a 2 % perturbation of every weight
  tuned.wq += rand_mat(w.wq.rows(), w.wq.cols(), 1410, 0.02 * max_abs(w.wq));
  tuned.wk += rand_mat(w.wk.rows(), w.wk.cols(), 1411, 0.02 * max_abs(w.wk));
  tuned.wv += rand_mat(w.wv.rows(), w.wv.cols(), 1412, 0.02 * max_abs(w.wv));
  tuned.wo += rand_mat(w.wo.rows(), w.wo.cols(), 1413, 0.02 * max_abs(w.wo));
  const Eigen::MatrixXd x = rand_mat(10, d, 1420);
  const Eigen::MatrixXd reference = oracle_attention(x, w, layout, layout.rope, 0);
  const auto average = [](const attention_weights& a, const attention_weights& b) {
    return attention_weights{(a.wq + b.wq) / 2, (a.wk + b.wk) / 2, (a.wv + b.wv) / 2,
                             (a.wo + b.wo) / 2, (a.bq + b.bq) / 2, (a.bk + b.bk) / 2,
                             (a.bv + b.bv) / 2};
  };
  const auto error_of = [&](const attention_weights& m) {
    return (oracle_attention(x, m, layout, layout.rope, 0) - reference).norm() / reference.norm();
  };
  const double tuned_error = error_of(tuned);
  const double unlocked_error = error_of(average(w, tuned));
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    stored_attention<double> locked(w);
    locked.lock(layout, {10.0, seed});
    const attention_weights l = locked.as_double();
    const double locked_alone = error_of(l);
    const double locked_error = error_of(average(l, tuned));
    CAPTURE(seed, tuned_error, unlocked_error, locked_alone, locked_error);
    UNSCOPED_INFO("seed " << seed << ": fine-tune alone " << tuned_error << ", unlocked average "
                          << unlocked_error << ", locked alone " << locked_alone
                          << ", locked average " << locked_error << ", ratio "
                          << locked_error / unlocked_error);
    REQUIRE(locked_alone <= 1e-11);
    REQUIRE(locked_error > 10.0 * unlocked_error);
  }
}

TEST_CASE("lock_attention refuses bad layouts, parameters, shapes and values, changing nothing",
          "[unlearn][mergelock]") {
  const unlearn::attention_layout layout{4, 2, 4, rope_pairing::interleaved};
  const idx d = 8;
  const attention_weights w = random_attention(layout, d, true, 1500);
  stored_attention<float> s(w);
  const stored_attention<float> copy = s;
  const auto unchanged = [&] {
    REQUIRE(s.wq == copy.wq);
    REQUIRE(s.wk == copy.wk);
    REQUIRE(s.wv == copy.wv);
    REQUIRE(s.wo == copy.wo);
    REQUIRE(s.bq == copy.bq);
    REQUIRE(s.bk == copy.bk);
    REQUIRE(s.bv == copy.bv);
  };
  const auto refuses = [&](const unlearn::attention_layout& l, const unlearn::lock_params& p,
                           const std::string& what) {
    CAPTURE(what);
    REQUIRE_THROWS_WITH(s.lock(l, p), Contains("unlearn::lock_attention") && Contains(what));
    unchanged();
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();

  SECTION("layout and parameters") {
    refuses({4, 3, 4, rope_pairing::none}, {}, "layout.n_heads 4 is not a multiple");
    refuses({4, 2, 3, rope_pairing::half_split}, {}, "layout.head_dim 3 is odd");
    refuses({0, 2, 4, rope_pairing::none}, {}, "layout.n_heads 0");
    refuses({4, 2, 0, rope_pairing::none}, {}, "layout.head_dim 0");
    for (double kappa : {0.5, nan, inf, -1.0, 1e5}) {
      refuses(layout, {kappa, 0}, "params.kappa_max");
    }
    REQUIRE_THROWS_WITH(unlearn::make_lock_matrices({4, 3, 4, rope_pairing::none}, {}),
                        Contains("unlearn::make_lock_matrices") && Contains("layout.n_heads"));
    REQUIRE_THROWS_WITH(unlearn::make_lock_matrices(layout, {0.99, 0}),
                        Contains("unlearn::make_lock_matrices") && Contains("params.kappa_max"));
    // kappa_max = 1 is allowed (orthogonal / pure rotations) and the float cap is 0.01 / eps.
    stored_attention<float> ok(w);
    REQUIRE_NOTHROW(ok.lock(layout, {1.0, 0}));
    stored_attention<float> ok2(w);
    REQUIRE_NOTHROW(ok2.lock(layout, {8e4, 0}));
  }
  SECTION("shapes") {
    refuses({4, 2, 5, rope_pairing::none}, {}, "wq has 16 rows but n_heads * head_dim = 20");
    refuses({4, 1, 4, rope_pairing::none}, {}, "wk is 8 x 8 but needs");
    refuses({2, 2, 8, rope_pairing::none}, {}, "wk is 8 x 8");
    matrix<float> wo_t = s.wo.transpose();
    REQUIRE_THROWS_WITH(unlearn::lock_attention(s.wq, s.wk, s.wv, wo_t, layout),
                        Contains("unlearn::lock_attention") && Contains("wo is 16 x 8"));
    unchanged();
    matrix<float> wv_short = s.wv.leftCols(d - 1);
    REQUIRE_THROWS_WITH(unlearn::lock_attention(s.wq, s.wk, wv_short, s.wo, layout),
                        Contains("wv is 8 x 7"));
    unchanged();
  }
  SECTION("biases") {
    unlearn::qkv_biases<float> b = s.biases();
    b.k.size = 7;
    REQUIRE_THROWS_WITH(unlearn::lock_attention(s.wq, s.wk, s.wv, s.wo, layout, {}, b),
                        Contains("biases.k has size 7 but the layout needs 8"));
    unchanged();
    b = s.biases();
    b.v = {nullptr, 8};
    REQUIRE_THROWS_WITH(unlearn::lock_attention(s.wq, s.wk, s.wv, s.wo, layout, {}, b),
                        Contains("biases.v has null data but size 8"));
    unchanged();
  }
  SECTION("non-finite values and overflow") {
    const float saved = s.wk(3, 2);
    s.wk(3, 2) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(
        unlearn::lock_attention(s.wq, s.wk, s.wv, s.wo, layout, {}, s.biases()),
        Contains("unlearn::lock_attention") && Contains("wk has non-finite") && Contains("(3, 2)"));
    s.wk(3, 2) = saved;
    unchanged();
    const float saved_b = s.bq(5);
    s.bq(5) = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(unlearn::lock_attention(s.wq, s.wk, s.wv, s.wo, layout, {}, s.biases()),
                        Contains("biases.q has non-finite"));
    s.bq(5) = saved_b;
    unchanged();
    // With kappa_max = 1, B is a random orthogonal matrix: its rows have 1-norm > 1, so the bound
    // on B W_V exceeds the largest float when W_V holds it.
    const float saved_v = s.wv(0, 0);
    s.wv(0, 0) = std::numeric_limits<float>::max();
    REQUIRE_THROWS_WITH(
        unlearn::lock_attention(s.wq, s.wk, s.wv, s.wo, layout, {1.0, 0}, s.biases()),
        Contains("unlearn::lock_attention") && Contains("overflow"));
    s.wv(0, 0) = saved_v;
    unchanged();
  }
}

}  // namespace
