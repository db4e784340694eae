#include "kernels/cpu/blas_core.h"

#include <cblas.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace tinygpt::cpu {

std::string BlasCoreOverride(const std::string& picked, bool avx512_bf16, bool avx512, bool avx2_fma) {
  // OpenBLAS' kernel families without AVX2: what an unrecognised x86 model falls back to.
  static const char* const kPreAvx2[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge", "Atom"};
  bool generic = false;
  for (const char* name : kPreAvx2) generic |= picked == name;
  if (!generic) return "";
  if (avx512_bf16) return "Cooperlake";
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return "";
}

void ReexecWithBetterBlasKernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's (or our earlier) choice stands
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const std::string picked = openblas_get_corename();
  const std::string core = BlasCoreOverride(picked, avx512 && __builtin_cpu_supports("avx512bf16"), avx512,
                                            __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  if (core.empty()) return;
  std::fprintf(stderr, "tinygpt: OpenBLAS does not know this CPU and picked its %s kernels; restarting with OPENBLAS_CORETYPE=%s\n",
               picked.c_str(), core.c_str());
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  // The new image starts with the default action for SIGTERM/SIGINT until
  // its handlers are installed (cli/stop_signals.cc, which unblocks them):
  // blocked across the exec, a signal waits for them instead of killing it.
  sigset_t stop, old;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, &old);
  execv("/proc/self/exe", argv);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  std::fprintf(stderr, "tinygpt: re-exec failed (%s); continuing with the %s kernels\n", std::strerror(errno), picked.c_str());
}

}  // namespace tinygpt::cpu
