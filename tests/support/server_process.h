// Runs `tinygpt serve` as a real child process on loopback for integration
// tests, and trains the small checkpoint those tests share.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "train/trainer.h"

namespace tinygpt::testing {

// TINYGPT_BIN (environment) overrides the binary built beside the tests.
inline std::string TinygptBinary() {
  const char* env = std::getenv("TINYGPT_BIN");
  return env ? env : TINYGPT_BIN;
}

// Extra `serve` flags from TINYGPT_TEST_SERVER_FLAGS (space separated), e.g.
// "--device=cuda" to run the same tests against the CUDA backend.
inline std::vector<std::string> ExtraServerFlags() {
  std::vector<std::string> out;
  const char* env = std::getenv("TINYGPT_TEST_SERVER_FLAGS");
  std::string cur;
  for (const char* p = env ? env : ""; ; ++p) {
    if (*p == ' ' || *p == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (!*p) break;
    } else {
      cur.push_back(*p);
    }
  }
  return out;
}

// Trains (once per process) a seed-preset counting model in a few seconds.
// The files are removed when the test process exits.
inline const std::string& SharedCheckpoint() {
  struct Trained {
    std::string path = "/tmp/tinygpt-test-" + std::to_string(getpid()) + ".safetensors";
    Trained() {
      const std::string cmd = TinygptBinary() + " train --preset seed --steps 60 --batch 16 --out " + path + " > /dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("training the test checkpoint failed: " + cmd);
    }
    ~Trained() {
      RemoveTrainingCheckpoint(path);
    }
  };
  static const Trained trained;
  return trained.path;
}

class ServerProcess {
 public:
  // Starts `tinygpt serve` on a free port with the extra flags; waits until it listens.
  explicit ServerProcess(std::vector<std::string> flags, const std::string& checkpoint = SharedCheckpoint()) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      std::vector<std::string> args{TinygptBinary(), "serve", "--checkpoint=" + checkpoint, "--port=0", "--metrics-port=0",
                                     "--http-port=-1"};
      args.insert(args.end(), flags.begin(), flags.end());
      for (auto& f : ExtraServerFlags()) args.push_back(f);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    FILE* f = fdopen(out[0], "r");
    char line[512];
    while (fgets(line, sizeof(line), f)) {
      std::string l(line);
      if (auto at = l.find("listening on "); at != std::string::npos) {
        address_ = l.substr(at + 13, l.find(' ', at + 13) - (at + 13));
      }
      if (auto at = l.find("/metrics"); at != std::string::npos) {
        const size_t colon = l.rfind(':', at);
        metrics_port_ = std::stoi(l.substr(colon + 1, at - colon - 1));
        break;
      }
    }
    stdout_ = f;  // keep the pipe open so the server's writes never fail
    if (address_.empty()) throw std::runtime_error("server did not start");
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_) fclose(stdout_);
  }
  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  // Sends `sig` and waits for the exit; returns the exit code (or -signal).
  int Stop(int sig = SIGTERM, std::chrono::seconds timeout = std::chrono::seconds(30)) {
    kill(pid_, sig);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        pid_ = -1;
        return -999;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  std::string address_;
  int metrics_port_ = -1;
};

}  // namespace tinygpt::testing
