// SPDX-License-Identifier: Apache-2.0
// The error policy: exception types and messages that name the function, argument and values.
#include <limits>
#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>

TEST_CASE("check throws reparam::error naming function and values", "[core][error]") {
  REQUIRE_NOTHROW(reparam::detail::check(true, "fam::op", "never"));
  REQUIRE_THROWS_AS(reparam::detail::check(false, "shiftadd::quantize", "group_size ", 96,
                                           " does not divide cols ", 4000),
                    reparam::error);
  REQUIRE_THROWS_WITH(reparam::detail::check(false, "shiftadd::quantize", "group_size ", 96,
                                             " does not divide cols ", 4000),
                      "shiftadd::quantize: group_size 96 does not divide cols 4000");
  // reparam::error is an invalid_argument, io_error a runtime_error, so generic handlers work.
  REQUIRE_THROWS_AS(reparam::detail::check(false, "f", "x"), std::invalid_argument);
  REQUIRE_THROWS_AS(reparam::detail::check_io(false, "io::open", "bad file"), reparam::io_error);
  REQUIRE_THROWS_AS(reparam::detail::check_io(false, "io::open", "bad file"), std::runtime_error);
}

TEST_CASE("check_finite names the first non-finite value and its position", "[core][error]") {
  const float good[3] = {1.f, -2.f, 0.f};
  REQUIRE_NOTHROW(reparam::detail::check_finite("op", "weights", good, 3));
  const float bad[4] = {1.f, 2.f, std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN()};
  REQUIRE_THROWS_WITH(reparam::detail::check_finite("scale::fold", "r", bad, 4),
                      "scale::fold: r has non-finite value inf at flat index 2");
  const double nan_first[1] = {std::numeric_limits<double>::quiet_NaN()};
  REQUIRE_THROWS_WITH(reparam::detail::check_finite("op", "x", nan_first, 1),
                      Catch::Contains("x has non-finite value") && Catch::Contains("index 0"));
}
