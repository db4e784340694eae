// The `tinygpt` subcommands. Each returns the process exit code.
#pragma once

namespace tinygpt {
int TrainCommand();
int GenerateCommand();
int ServeCommand();
int BenchCommand();
}  // namespace tinygpt
