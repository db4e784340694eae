// SIGTERM and SIGINT for every `tinygpt` command, handled from the first
// instruction of the program that is ours (cli/stop_signals.cc installs the
// handlers from the executable's .preinit_array, before any library's
// initializer: OpenBLAS, gRPC and protobuf take tens of milliseconds there).
// Until a command asks for a drain, a stop signal writes one line to stderr
// and exits at once with 128 + the signal (143 for SIGTERM): nothing is
// served yet, so there is nothing to finish. `tinygpt serve` asks for the
// drain once the model is loaded; from then on a stop signal is recorded and
// WaitForStopSignal returns it, at once if it came during the rest of start-up.
#pragma once

namespace tinygpt {

// From now on stop signals are recorded for WaitForStopSignal instead of
// ending the process.
void DrainOnStopSignals();
// Blocks until a stop signal has come (after DrainOnStopSignals); returns it.
int WaitForStopSignal();

}  // namespace tinygpt
