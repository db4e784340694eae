#include "cli/stop_signals.h"

#include <errno.h>
#include <semaphore.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace tinygpt {
namespace {

std::atomic<int> g_draining{0};  // DrainOnStopSignals was called
std::atomic<int> g_signal{0};    // the first stop signal since then
sem_t g_signalled;               // posted by the handler once draining

// What a signal handler may call: write(2), _exit, sem_post, atomics.
void Write(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0 && errno != EINTR) return;
    if (w > 0) s += w, n -= static_cast<size_t>(w);
  }
}

void OnStopSignal(int sig) {
  if (g_draining.load()) {
    int none = 0;
    g_signal.compare_exchange_strong(none, sig);
    sem_post(&g_signalled);
    return;
  }
  Write(sig == SIGTERM ? "tinygpt: SIGTERM: exiting at once (status 143)\n"
                       : "tinygpt: SIGINT: exiting at once (status 130)\n");
  _exit(128 + sig);
}

void InstallStopSignalHandlers(int, char**, char**) {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  // An image started by our own re-exec (kernels/cpu/blas_core.cc) begins
  // with them blocked: a signal that came in between is delivered now.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_UNBLOCK, &stop, nullptr);
}

}  // namespace

// Runs before every shared library's initializer (an executable's
// .preinit_array comes first in the dynamic loader's init order), so only
// the loader's own mapping of the libraries precedes it.
__attribute__((section(".preinit_array"), used)) void (*const kInstallStopSignalHandlers)(int, char**, char**) =
    &InstallStopSignalHandlers;

void DrainOnStopSignals() {
  sem_init(&g_signalled, 0, 0);
  g_draining.store(1);
}

int WaitForStopSignal() {
  while (sem_wait(&g_signalled) != 0 && errno == EINTR) {
  }
  return g_signal.load();
}

}  // namespace tinygpt
