// tinygpt: train | generate | serve | bench.
// Flags may be spelled with dashes (--max-new-tokens) or underscores.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "common/flag_args.h"
#include "common/log.h"
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

struct Command {
  const char* name;
  const char* summary;
  int (*run)();
};

constexpr Command kCommands[] = {
    {"train", "train TinyGPT and write a safetensors checkpoint", tinygpt::TrainCommand},
    {"generate", "generate tokens from a checkpoint", tinygpt::GenerateCommand},
    {"serve", "serve Generate RPCs over gRPC", tinygpt::ServeCommand},
    {"bench", "CPU training throughput (tokens/s)", tinygpt::BenchCommand},
};

bool IsHelpArg(const std::string& a) { return a == "--help" || a == "-help" || a == "-h" || a == "--helpshort"; }

// `tinygpt CMD --help`: the flags defined in cli/CMD_command.cc, then those of
// cli/common_flags.cc. Abseil's own --help would filter flags by the program's
// file name (which no file here has, hence its "No flags matched") and exit 1.
void PrintCommandHelp(const Command& cmd) {
  struct Line {
    std::string name, text;
  };
  std::vector<Line> own, shared;
  const std::string own_file = absl::StrCat("cli/", cmd.name, "_command.cc");
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    const std::string file = flag->Filename();
    std::vector<Line>* into = absl::EndsWith(file, own_file) ? &own : absl::EndsWith(file, "cli/common_flags.cc") ? &shared : nullptr;
    if (into == nullptr) continue;
    std::string dashed(name);
    std::replace(dashed.begin(), dashed.end(), '_', '-');  // both spellings parse; the README uses dashes
    into->push_back({dashed, absl::StrCat("  --", dashed, " (default: ", flag->DefaultValue(), ")\n      ", flag->Help(), "\n")});
  }
  auto print = [](const char* heading, std::vector<Line>& lines) {
    std::sort(lines.begin(), lines.end(), [](const Line& a, const Line& b) { return a.name < b.name; });
    std::printf("\n%s\n", heading);
    for (const Line& l : lines) std::fputs(l.text.c_str(), stdout);
  };
  std::printf("usage: tinygpt %s [flags]\n  %s\n", cmd.name, cmd.summary);
  print("flags:", own);
  print("shared flags (of every tinygpt command; each uses those that apply to it):", shared);
}

}  // namespace

int main(int argc, char** argv) {
  tinygpt::cpu::ReexecWithBetterBlasKernels(argv);
  // Debian's Abseil keeps absl::Mutex's deadlock detector on, which records
  // every lock acquisition in a global graph; gRPC takes such mutexes for
  // every message (perf showed GraphCycles::GetId on its threads while
  // serving streams). Lock order is not what this detector should police in
  // a release server.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s\n", kUsage);
    return argc < 2 ? 2 : (std::strcmp(argv[1], "--help") == 0 ? 0 : 2);
  }
  const std::string command = argv[1];
  const Command* cmd = nullptr;
  for (const Command& c : kCommands)
    if (command == c.name) cmd = &c;
  if (cmd == nullptr) {
    std::fprintf(stderr, "tinygpt: unknown command '%s'\n%s\n", command.c_str(), kUsage);
    return 2;
  }
  std::vector<std::string> args = tinygpt::SubcommandArgs(argc, argv);
  if (std::any_of(args.begin() + 1, args.end(), IsHelpArg)) {
    PrintCommandHelp(*cmd);
    return 0;
  }
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(ptrs.size()), ptrs.data());
  tinygpt::log_internal::SetMinLogLevel(absl::GetFlag(FLAGS_minloglevel));
  tinygpt::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  return cmd->run();
}
