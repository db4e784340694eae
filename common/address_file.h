// The address file: where a running `tinygpt serve` can be reached from the
// same machine (or container). The server writes "host:port" to the file that
// the environment variable TINYGPT_ADDRESS_FILE names, once it listens, and
// removes it when it exits; tinygpt-client without --target reads it. The
// container image sets the variable, so its HEALTHCHECK (`tinygpt-client
// health`) asks the port the server was started on, whatever --port said.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace tinygpt {

inline const char* AddressFileFromEnv() {
  const char* f = std::getenv("TINYGPT_ADDRESS_FILE");
  return f != nullptr && *f != '\0' ? f : nullptr;
}

// The host a local client dials for a server bound to `bind_host`: a wildcard
// bind is reached on loopback.
inline std::string LocalDialHost(const std::string& bind_host) {
  if (bind_host.empty() || bind_host == "0.0.0.0") return "127.0.0.1";
  if (bind_host == "::" || bind_host == "[::]") return "[::1]";
  return bind_host;
}

// Writes "host:port\n" atomically (a temporary file, then rename). Returns
// the path written, empty when the variable is unset; a failure is printed
// and otherwise ignored (the server serves without it).
inline std::string WriteAddressFile(const std::string& bind_host, int port) {
  const char* path = AddressFileFromEnv();
  if (path == nullptr) return "";
  const std::string tmp = std::string(path) + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << LocalDialHost(bind_host) << ":" << port << "\n";
    out.close();
    if (!out || std::rename(tmp.c_str(), path) != 0) {
      std::fprintf(stderr, "tinygpt serve: cannot write TINYGPT_ADDRESS_FILE %s (health checks that read it will fail)\n", path);
      std::remove(tmp.c_str());
      return "";
    }
  }
  return path;
}

// The address in the file named by TINYGPT_ADDRESS_FILE; empty when the
// variable is unset or the file is missing or empty.
inline std::string ReadAddressFile() {
  const char* path = AddressFileFromEnv();
  if (path == nullptr) return "";
  std::ifstream in(path);
  std::string addr;
  if (!(in >> addr)) return "";
  return addr;
}

}  // namespace tinygpt
