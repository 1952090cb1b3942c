// SPDX-License-Identifier: Apache-2.0
// The examples' shared helpers: the results table (text and JSON) and the command-line parser.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <reparam/core/error.hpp>

#include "common/cli.hpp"
#include "common/results.hpp"
#include "runner_fixture.hpp"

TEST_CASE("results prints aligned tables per section and writes a JSON list of records",
          "[runner][common]") {
  examples::results results;
  results.add({{"section", "baseline"}, {"metric", "ppl"}, {"tokens", 1804}, {"ppl", 3.5482}});
  results.add({{"section", "baseline"}, {"metric", "nll"}, {"tokens", 8192}, {"note", "x"}});
  results.add({{"section", "speed"}, {"metric", "decode_tokens_per_s"}, {"value", 21978.8}});
  CHECK_THROWS_AS(results.add(nlohmann::ordered_json::array()), reparam::error);

  std::ostringstream text;
  results.print(text, "baseline");
  CHECK(text.str() ==
        "metric  tokens  ppl     note\n"
        "------  ------  ------  ----\n"
        "ppl       1804  3.5482\n"
        "nll       8192          x\n");
  std::ostringstream all;
  results.print(all);
  CHECK(all.str().find("section") == 0);
  CHECK(all.str().find("21978.8") != std::string::npos);
  std::ostringstream none;
  results.print(none, "no such section");
  CHECK(none.str().empty());

  const std::string path = runner_test::scratch_path("results.json");
  results.write_json(path);
  std::ifstream in(path);
  const nlohmann::json parsed = nlohmann::json::parse(in);
  REQUIRE(parsed.is_array());
  REQUIRE(parsed.size() == 3);
  CHECK(parsed[0]["tokens"] == 1804);
  CHECK(parsed[0]["ppl"].get<double>() == 3.5482);
  CHECK(parsed[2]["metric"] == "decode_tokens_per_s");
  CHECK_THROWS_AS(results.write_json(runner_test::scratch_path("no/such/dir.json")),
                  reparam::io_error);
}

TEST_CASE("cli parses options and flags, prints help, and rejects unknown input",
          "[runner][common]") {
  std::string data = "default";
  long steps = 200;
  double seconds = 0.25;
  bool quiet = false;
  examples::cli cli("prog", "does things");
  cli.add_option("--data", &data, "DIR", "data directory");
  cli.add_option("--steps", &steps, "N", "steps");
  cli.add_option("--seconds", &seconds, "S", "seconds");
  cli.add_flag("--quiet", &quiet, "less output");
  const auto parse = [&](std::initializer_list<const char*> args, std::string* err_text = nullptr) {
    std::vector<const char*> argv = {"prog"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::ostringstream out, err;
    const int code = cli.parse(static_cast<int>(argv.size()), argv.data(), out, err);
    if (err_text != nullptr) *err_text = err.str() + out.str();
    return code;
  };

  CHECK(parse({}) == examples::cli::proceed);
  CHECK(parse({"--data", "/x", "--steps=12", "--seconds", "0.5", "--quiet"}) ==
        examples::cli::proceed);
  CHECK(data == "/x");
  CHECK(steps == 12);
  CHECK(seconds == 0.5);
  CHECK(quiet);

  std::string message;
  CHECK(parse({"--help"}, &message) == 0);
  CHECK(message.find("usage: prog") == 0);
  CHECK(message.find("--steps N") != std::string::npos);
  CHECK(message.find("(default: 200)") != std::string::npos);
  CHECK(parse({"--bogus"}, &message) == 2);
  CHECK(message.find("unknown option '--bogus'") != std::string::npos);
  CHECK(parse({"--steps"}, &message) == 2);
  CHECK(message.find("needs a value") != std::string::npos);
  CHECK(parse({"--steps", "12x"}, &message) == 2);
  CHECK(message.find("bad value '12x'") != std::string::npos);
  CHECK(parse({"--quiet=1"}, &message) == 2);
  CHECK(parse({"positional"}, &message) == 2);
}
