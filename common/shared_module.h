// Opens one of tinygpt's own shared modules (the CUDA backend, the
// SentencePiece wrapper): beside the running executable first, then on the
// loader's path (RUNPATH, LD_LIBRARY_PATH).
#pragma once
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <string>

namespace tinygpt {

// Returns the dlopen handle, or null with the loader's messages in *error.
inline void* OpenSharedModule(const std::string& name, int flags, std::string* error) {
  std::string candidates[2] = {name, name};
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    const std::string path(exe, n);
    candidates[0] = path.substr(0, path.rfind('/') + 1) + name;
  }
  error->clear();
  for (const auto& path : candidates) {
    if (void* handle = dlopen(path.c_str(), flags)) return handle;
    *error += " ";
    *error += dlerror();
    *error += ";";
  }
  return nullptr;
}

}  // namespace tinygpt
