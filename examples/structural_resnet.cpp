// SPDX-License-Identifier: Apache-2.0
// Structural re-parameterization on a real network: the bundled CIFAR-10 ResNet-20 (akamaster,
// BatchNorm after every conv) on the first 1000 CIFAR-10 test images, run as trained and with
// every conv+BN folded into one conv (structural::fold_batch_norm); top-1, argmax agreement and
// logits against PyTorch's reference logits, and images/s before and after folding (1 thread).
// Then stage 1 rebuilt as RepVGG blocks (3x3 conv-BN + 1x1 conv-BN + identity BN per conv) and
// merged with structural::merge_repvgg: output differences against a derived rounding bound, and
// the time per image of the stage before and after merging. --json writes the same records.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/structural/forward.hpp>

#include "common/cli.hpp"
#include "common/resnet.hpp"
#include "common/results.hpp"

namespace {

namespace rn = examples::resnet;
using reparam::index;

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string json_path;
  long images = 1000;
  long double_images = 200;
  long stage_images = 200;
  long batch = 50;
  int repeats = 3;
};

struct check_list {
  bool is_ok = true;
  void expect(bool condition, const std::string& what) {
    std::cout << (condition ? "  ok      " : "  FAILED  ") << what << '\n';
    is_ok = is_ok && condition;
  }
};

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), pattern, value);
  return buffer;
}

examples::record network_record(const char* network, const char* precision, const rn::evaluation& e,
                                const rn::evaluation* reference) {
  examples::record r{{"section", "resnet"},
                     {"network", network},
                     {"precision", precision},
                     {"images", e.images},
                     {"top1_percent", 100.0 * e.top1()},
                     {"correct", e.correct},
                     {"argmax_agree_file", e.agree_with_file},
                     {"max_abs_logit_diff_file", e.max_abs_diff_file}};
  if (reference != nullptr) {
    r["argmax_agree_reference"] = rn::count_equal(e.predictions, reference->predictions);
    r["max_abs_logit_diff_reference"] =
        rn::max_abs_difference(e.logits, reference->logits.topRows(e.images));
  } else {
    r["argmax_agree_reference"] = nullptr;
    r["max_abs_logit_diff_reference"] = nullptr;
  }
  r["images_per_s"] = e.images_per_second();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);  // the timings are single-threaded figures
  options opts;
  examples::cli cli(
      "reparam_structural_resnet",
      "Folds every BatchNorm of the bundled CIFAR-10 ResNet-20 into its conv and merges a\n"
      "RepVGG version of stage 1, checking accuracy, logits and speed on real test images.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with resnet_cifar10/ and cifar10_test_1000/");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--images", &opts.images, "N", "test images to classify (1..1000)");
  cli.add_option("--double-images", &opts.double_images, "N",
                 "images for the double-precision fold check");
  cli.add_option("--stage-images", &opts.stage_images, "N",
                 "images for the RepVGG stage check and timing");
  cli.add_option("--batch", &opts.batch, "N", "images per forward call");
  cli.add_option("--repeats", &opts.repeats, "N",
                 "timing runs of each network and of the RepVGG stage (best kept)");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.images < 1 || opts.images > 1000 || opts.double_images < 1 ||
      opts.double_images > opts.images || opts.stage_images < 1 ||
      opts.stage_images > opts.images || opts.batch < 1 || opts.repeats < 1) {
    std::cerr << "reparam_structural_resnet: need 1 <= --double-images, --stage-images <= "
                 "--images <= 1000, --batch >= 1 and --repeats >= 1\n";
    return 2;
  }

  try {
    const std::string model_path = opts.data_dir + "/resnet_cifar10/resnet20_cifar10.safetensors";
    const rn::model model = rn::load_model(model_path);
    const rn::reference_logits ref = rn::load_reference_logits(
        opts.data_dir + "/resnet_cifar10/resnet20_ref_logits_first1000.safetensors");
    const rn::dataset data =
        rn::load_cifar10(opts.data_dir + "/cifar10_test_1000/cifar10_test_first1000.bin",
                         opts.images, model.mean, model.stddev);
    examples::results results;
    std::cout << "reparam structural: BatchNorm folding and RepVGG merging on a real ResNet-20\n"
              << "model: " << model_path << " (" << model.blocks.size() << " BasicBlocks, "
              << 6 * model.blocks_per_stage + 2 << " layers)\ndata: the first " << opts.images
              << " CIFAR-10 test images; reference logits from PyTorch (float32)\n";

    // --- BatchNorm folding
    bool is_fold_exact = false;
    const rn::network<float> reference_f = rn::reference_network<float>(model);
    const rn::network<float> folded_f = rn::folded_network<float>(model, &is_fold_exact);
    const rn::evaluation e_ref = rn::evaluate(reference_f, data, ref, opts.images, opts.batch);
    const rn::evaluation e_fold = rn::evaluate(folded_f, data, ref, opts.images, opts.batch);
    const rn::network<double> reference_d = rn::reference_network<double>(model);
    const rn::network<double> folded_d = rn::folded_network<double>(model);
    const rn::evaluation d_ref =
        rn::evaluate(reference_d, data, ref, opts.double_images, opts.batch);
    const rn::evaluation d_fold = rn::evaluate(folded_d, data, ref, opts.double_images, opts.batch);
    results.add(network_record("reference (BN separate)", "float", e_ref, nullptr));
    results.add(network_record("BN folded", "float", e_fold, &e_ref));
    results.add(network_record("reference (BN separate)", "double", d_ref, nullptr));
    results.add(network_record("BN folded", "double", d_fold, &d_ref));
    // Throughput: the best of `repeats` runs per network (the evaluation above is the first),
    // alternating the two so that load drift on a shared machine hits both alike.
    double reference_seconds = e_ref.seconds;
    double folded_seconds = e_fold.seconds;
    for (int r = 1; r < opts.repeats; ++r) {
      reference_seconds =
          std::min(reference_seconds,
                   static_cast<double>(opts.images) *
                       rn::seconds_per_image(reference_f, data.images, opts.images, opts.batch));
      folded_seconds = std::min(folded_seconds, static_cast<double>(opts.images) *
                                                    rn::seconds_per_image(folded_f, data.images,
                                                                          opts.images, opts.batch));
    }
    const double reference_rate = static_cast<double>(opts.images) / reference_seconds;
    const double folded_rate = static_cast<double>(opts.images) / folded_seconds;
    results.add({{"section", "fold_speed"},
                 {"precision", "float"},
                 {"images", e_ref.images},
                 {"batch", opts.batch},
                 {"threads", Eigen::nbThreads()},
                 {"runs", opts.repeats},
                 {"reference_images_per_s", reference_rate},
                 {"folded_images_per_s", folded_rate},
                 {"speedup", folded_rate / reference_rate},
                 {"convs_folded", static_cast<long>(2 * model.blocks.size() + 1)},
                 {"fold_is_exact", is_fold_exact}});

    // --- Stage 1 as RepVGG blocks
    const rn::repvgg_stage stage = rn::make_repvgg_stage(model);
    const rn::repvgg_stage_report s = rn::check_repvgg_stage(
        model, stage, data.images, opts.stage_images, opts.batch, opts.repeats);
    results.add({{"section", "repvgg_stage"},
                 {"units", s.units},
                 {"images", s.images},
                 {"merge_is_exact", s.is_exact},
                 {"max_abs_diff_double", s.max_abs_diff_double},
                 {"max_abs_output_double", s.max_abs_output_double},
                 {"unit_bound_ratio", s.unit_bound_ratio},
                 {"stage_bound_ratio", s.stage_bound_ratio},
                 {"max_abs_diff_float", s.max_abs_diff_float},
                 {"max_abs_output_float", s.max_abs_output_float},
                 {"float_unit_bound_ratio", s.float_unit_bound_ratio},
                 {"float_bound_ratio", s.float_bound_ratio}});
    results.add({{"section", "repvgg_speed"},
                 {"precision", "float"},
                 {"images", s.images},
                 {"batch", opts.batch},
                 {"threads", Eigen::nbThreads()},
                 {"multi_branch_ms_per_image", 1e3 * s.seconds_per_image_multi_branch},
                 {"merged_ms_per_image", 1e3 * s.seconds_per_image_merged},
                 {"speedup", s.seconds_per_image_multi_branch / s.seconds_per_image_merged}});

    std::cout << "\n== BatchNorm folding: " << 2 * model.blocks.size() + 1
              << " conv+BN pairs folded into convs with bias ==\n";
    results.print(std::cout, "resnet");
    results.print(std::cout, "fold_speed");
    std::cout << "notes:\n"
                 "  float rows: the 1000-image protocol of data/resnet_cifar10/README.md (PyTorch "
                 "top-1 91.5 %); double rows: the first "
              << opts.double_images
              << " images, where the folded and the separate-BN networks differ by rounding "
                 "only.\n"
                 "  *_file: against resnet20_ref_logits_first1000.safetensors; *_reference: the "
                 "folded network against the separate-BN one in the same precision.\n";
    std::cout << "\n== RepVGG: stage 1 (16 channels, 6 convs) with a 1x1 conv-BN and an identity "
                 "BN added to every 3x3 conv-BN, merged by merge_repvgg ==\n";
    results.print(std::cout, "repvgg_stage");
    results.print(std::cout, "repvgg_speed");
    std::cout << "notes:\n"
                 "  the added branches are derived from the real weights (1x1 = half the 3x3 "
                 "centre tap; BN statistics from fixed seeds, variances 0.01-0.3), so the stage "
                 "is not the trained one: the check is multi-branch vs merged.\n"
                 "  bound ratios are max |difference| / derived rounding bound per element "
                 "(<= 1: inside; see examples/common/resnet.hpp check_repvgg_stage). The unit "
                 "ratios compare each merged conv with its three branches on the same input (a "
                 "sharp bound); the stage ratios use a worst-case propagation through |W'| of "
                 "all 6 convs, so they sit far below 1.\n";

    std::cout << "\nchecks:\n";
    check_list checks;
    if (opts.images == 1000) {
      checks.expect(e_ref.correct == 915,
                    "reference top-1 is 91.5 % (" + std::to_string(e_ref.correct) + "/1000)");
    }
    checks.expect(e_fold.predictions == e_ref.predictions,
                  "the BN-folded network predicts every image like the reference");
    checks.expect(e_ref.agree_with_file == e_ref.images,
                  "reference predictions equal PyTorch's on every image");
    checks.expect(e_ref.max_abs_diff_file < 1e-4 && e_fold.max_abs_diff_file < 1e-4,
                  "logits within 1e-4 of PyTorch's (reference " +
                      format("%.2g", e_ref.max_abs_diff_file) + ", folded " +
                      format("%.2g", e_fold.max_abs_diff_file) + ")");
    checks.expect(is_fold_exact && s.is_exact, "every fold and merge reports itself exact");
    checks.expect(
        s.unit_bound_ratio <= 1.0 && s.stage_bound_ratio <= 1.0 && s.float_bound_ratio <= 1.0,
        "RepVGG merged vs multi-branch within the derived bound (double " +
            format("%.2g", s.max_abs_diff_double) + ", float " +
            format("%.2g", s.max_abs_diff_float) + ")");
    if (!opts.json_path.empty()) {
      results.write_json(opts.json_path);
      std::cout << "wrote " << results.records().size() << " records to " << opts.json_path << '\n';
    }
    return checks.is_ok ? 0 : 3;
  } catch (const std::exception& e) {
    std::cerr << "reparam_structural_resnet: " << e.what() << '\n';
    return 1;
  }
}
