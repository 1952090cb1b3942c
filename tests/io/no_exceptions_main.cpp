// SPDX-License-Identifier: Apache-2.0
// Built with -fno-exceptions: proves the io headers compile without exceptions, and (run on a
// missing file) that a failed check prints its message and aborts instead of throwing.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <reparam/io/safetensors.hpp>

#if !defined(REPARAM_NO_EXCEPTIONS)
#error "this test must be compiled with -fno-exceptions"
#endif

extern "C" void report_abort(int /*signal*/) {
  // Turn the abort into an exit status ctest can check, after the policy printed its message.
  static const char message[] = "aborted by the error policy\n";
  std::fwrite(message, 1, sizeof message - 1, stderr);
  std::_Exit(3);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s file.safetensors\n", argv[0]);
    return 2;
  }
  std::signal(SIGABRT, report_abort);
  const auto file = reparam::io::safetensors_file::open(argv[1]);
  std::size_t values = 0;
  for (const reparam::io::tensor_info& info : file.tensors()) {
    values += file.to_float(info.name).size();
  }
  reparam::io::safetensors_writer writer;
  writer.add("x", file.load_matrix(file.tensors().front().name));
  const auto copy = reparam::io::safetensors_file::from_buffer(writer.to_bytes());
  std::printf("opened %zu tensors, %zu values; copy has %zu tensor\n", file.tensors().size(),
              values, copy.tensors().size());
  return 0;
}
