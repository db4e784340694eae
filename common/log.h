// Minimal leveled logging to stderr, one line per message with a UTC
// timestamp. Debian 12's Abseil (20220623) predates absl/log, so this stands
// in for LOG(INFO)/LOG(WARNING)/LOG(ERROR) with the same call syntax, and for
// absl/log's --minloglevel: messages below the level (0 INFO, 1 WARNING,
// 2 ERROR) are dropped, their arguments not even evaluated. (absl's
// --stderrthreshold picks what also goes to stderr beside the log files;
// everything here goes to stderr only, so --minloglevel is the one level.)
#pragma once
#include <sys/time.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <sstream>

namespace tinygpt::log_internal {

inline std::atomic<int> min_level{0};
inline void SetMinLogLevel(int level) { min_level.store(level); }
inline bool Enabled(int level) { return level >= min_level.load(std::memory_order_relaxed); }
// Lets `cond ? (void)0 : Voidify() & stream << ...` type-check (& binds
// looser than <<).
struct Voidify {
  void operator&(std::ostream&) {}
};

class Line {
 public:
  Line(char level, const char* file, int line) {
    timeval tv;
    gettimeofday(&tv, nullptr);
    tm t;
    gmtime_r(&tv.tv_sec, &t);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%c%02d%02d %02d:%02d:%02d.%06ld ", level, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min,
                  t.tm_sec, static_cast<long>(tv.tv_usec));
    const char* base = file;
    for (const char* p = file; *p; ++p)
      if (*p == '/') base = p + 1;
    ss_ << buf << base << ":" << line << "] ";
  }
  ~Line() {
    ss_ << '\n';
    std::fputs(ss_.str().c_str(), stderr);
  }
  std::ostream& stream() { return ss_; }

 private:
  std::ostringstream ss_;
};

}  // namespace tinygpt::log_internal

#define TINYGPT_LOG_AT(level, letter)                                    \
  !::tinygpt::log_internal::Enabled(level) ? (void)0                      \
                                           : ::tinygpt::log_internal::Voidify() & \
                                                 ::tinygpt::log_internal::Line(letter, __FILE__, __LINE__).stream()
#define TINYGPT_LOG_INFO TINYGPT_LOG_AT(0, 'I')
#define TINYGPT_LOG_WARNING TINYGPT_LOG_AT(1, 'W')
#define TINYGPT_LOG_ERROR TINYGPT_LOG_AT(2, 'E')
#define LOG(severity) TINYGPT_LOG_##severity
