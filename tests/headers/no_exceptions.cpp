// SPDX-License-Identifier: Apache-2.0
// Built with -fno-exceptions: the whole library must compile, and a failed argument check must
// print "reparam: <function>: <message>" to stderr and abort.
#include <cstdio>
#include <cstring>

#include <reparam/reparam.hpp>

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "ok") == 0) {
    const reparam::row_range r = reparam::split_rows_part(10, 3, 1);
    return r.begin == 4 && r.end == 7 ? 0 : 1;
  }
  reparam::split_rows_part(10, 0, 0);  // parts 0: must abort with the message
  std::puts("not reached");
  return 0;
}
