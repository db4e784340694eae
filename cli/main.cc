// tinygpt: train | generate | serve | bench.
// Flags may be spelled with dashes (--max-new-tokens) or underscores.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: tinygpt <command> [flags]\n"
    "  train     train TinyGPT and write a safetensors checkpoint\n"
    "  generate  generate tokens from a checkpoint\n"
    "  serve     serve Generate RPCs over gRPC\n"
    "  bench     CPU training throughput (tokens/s)\n"
    "Run `tinygpt <command> --help` for its flags.";

// Abseil flags are C++ identifiers; accept --foo-bar as --foo_bar.
std::string Normalize(const char* arg) {
  std::string a(arg);
  if (a.rfind("--", 0) != 0) return a;
  const size_t end = std::min(a.find('='), a.size());
  for (size_t i = 2; i < end; ++i)
    if (a[i] == '-') a[i] = '_';
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s\n", kUsage);
    return argc < 2 ? 2 : (std::strcmp(argv[1], "--help") == 0 ? 0 : 2);
  }
  const std::string command = argv[1];
  std::vector<std::string> args{std::string(argv[0]) + " " + command};
  for (int i = 2; i < argc; ++i) args.push_back(Normalize(argv[i]));
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(ptrs.size()), ptrs.data());
  if (command == "train") return tinygpt::TrainCommand();
  if (command == "generate") return tinygpt::GenerateCommand();
  if (command == "serve") return tinygpt::ServeCommand();
  if (command == "bench") return tinygpt::BenchCommand();
  std::fprintf(stderr, "tinygpt: unknown command '%s'\n%s\n", command.c_str(), kUsage);
  return 2;
}
