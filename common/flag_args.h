// Abseil flags are C++ identifiers (--max_new_tokens); the command lines of
// tinygpt and tinygpt-client also accept dashes (--max-new-tokens). This turns
// `prog subcommand args...` into the argv absl::ParseCommandLine expects.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

namespace tinygpt {

// argv[1] is the subcommand: it joins the program name (for usage messages).
inline std::vector<std::string> SubcommandArgs(int argc, char** argv) {
  std::vector<std::string> args{std::string(argv[0]) + " " + argv[1]};
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      std::replace(a.begin() + 2, a.begin() + static_cast<long>(end), '-', '_');
    }
    args.push_back(std::move(a));
  }
  return args;
}

}  // namespace tinygpt
