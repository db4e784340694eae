// Minimal leveled logging to stderr, one line per message with a UTC
// timestamp. Debian 12's Abseil (20220623) predates absl/log, so this stands
// in for LOG(INFO)/LOG(WARNING)/LOG(ERROR) with the same call syntax.
#pragma once
#include <sys/time.h>

#include <cstdio>
#include <ctime>
#include <sstream>

namespace tinygpt::log_internal {

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

#define TINYGPT_LOG_INFO ::tinygpt::log_internal::Line('I', __FILE__, __LINE__).stream()
#define TINYGPT_LOG_WARNING ::tinygpt::log_internal::Line('W', __FILE__, __LINE__).stream()
#define TINYGPT_LOG_ERROR ::tinygpt::log_internal::Line('E', __FILE__, __LINE__).stream()
#define LOG(severity) TINYGPT_LOG_##severity
