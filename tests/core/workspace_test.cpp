// SPDX-License-Identifier: Apache-2.0
// Workspace carving: alignment, accounting, and the capacity check at entry points.
#include <cstdint>

#include <catch2/catch.hpp>

#include <reparam/core/workspace.hpp>

TEST_CASE("workspace hands out aligned, non-overlapping arrays", "[core][workspace]") {
  const std::size_t need = reparam::workspace_bytes<float>(3) +
                           reparam::workspace_bytes<std::int8_t>(65) +
                           reparam::workspace_bytes<double>(1);
  CHECK(reparam::workspace_bytes<float>(3) == 64);
  CHECK(reparam::workspace_bytes<std::int8_t>(65) == 128);
  CHECK(reparam::workspace_bytes<float>(0) == 0);
  reparam::workspace_buffer buffer(need);
  reparam::workspace ws = buffer.view();
  REQUIRE(ws.size() == need);
  float* a = ws.take<float>(3);
  std::int8_t* b = ws.take<std::int8_t>(65);
  double* c = ws.take<double>(1);
  for (const void* p :
       {static_cast<const void*>(a), static_cast<const void*>(b), static_cast<const void*>(c)}) {
    CHECK(reinterpret_cast<std::uintptr_t>(p) % reparam::workspace_alignment == 0);
  }
  CHECK(reinterpret_cast<std::byte*>(b) - reinterpret_cast<std::byte*>(a) == 64);
  CHECK(reinterpret_cast<std::byte*>(c) - reinterpret_cast<std::byte*>(b) == 128);
  CHECK(ws.remaining() == 0);
  // Writing every element of every array stays inside the buffer (ASan checks this).
  a[2] = 1.f;
  b[64] = 1;
  c[0] = 1.0;
}

TEST_CASE("check_workspace reports the shortfall", "[core][workspace]") {
  reparam::workspace_buffer buffer(64);
  reparam::workspace ws = buffer.view();
  REQUIRE_NOTHROW(reparam::detail::check_workspace("op", ws, 64));
  REQUIRE_THROWS_WITH(reparam::detail::check_workspace("shiftadd::multiply", ws, 128),
                      "shiftadd::multiply: workspace has 64 bytes left but 128 are required; "
                      "size it with the matching *_workspace_size()");
}
