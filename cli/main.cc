// tinygpt: train | generate | serve | bench.
// Flags may be spelled with dashes (--max-new-tokens) or underscores.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "common/flag_args.h"
#include "kernels/cpu/blas_core.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

constexpr const char* kUsage =
    "usage: tinygpt <command> [flags]\n"
    "  train     train TinyGPT and write a safetensors checkpoint\n"
    "  generate  generate tokens from a checkpoint\n"
    "  serve     serve Generate RPCs over gRPC\n"
    "  bench     CPU training throughput (tokens/s)\n"
    "Run `tinygpt <command> --help` for its flags.";

}  // namespace

int main(int argc, char** argv) {
  tinygpt::cpu::ReexecWithBetterBlasKernels(argv);
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s\n", kUsage);
    return argc < 2 ? 2 : (std::strcmp(argv[1], "--help") == 0 ? 0 : 2);
  }
  const std::string command = argv[1];
  std::vector<std::string> args = tinygpt::SubcommandArgs(argc, argv);
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(ptrs.size()), ptrs.data());
  tinygpt::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  if (command == "train") return tinygpt::TrainCommand();
  if (command == "generate") return tinygpt::GenerateCommand();
  if (command == "serve") return tinygpt::ServeCommand();
  if (command == "bench") return tinygpt::BenchCommand();
  std::fprintf(stderr, "tinygpt: unknown command '%s'\n%s\n", command.c_str(), kUsage);
  return 2;
}
