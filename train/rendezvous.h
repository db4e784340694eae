// The ranks of one data-parallel run meet at rank 0's address, as torchrun's
// ranks meet at MASTER_ADDR:MASTER_PORT: any launcher (a shell loop, Slurm,
// a Kubernetes Job) can start them with --rank, --world-size and --init-addr.
// Rank 0 listens; every other rank connects, says who it is (its rank, the
// world size, its host and a fingerprint of the flags that must agree), and
// rank 0 answers each with its local rank (its place among the ranks of its
// host, which picks its GPU) or with why the run cannot start. After that
// the connections carry rank 0's broadcasts (NCCL's unique id) and tell a
// rank when another has gone (CheckPeers).
//
// The rendezvous moves a few bytes; the gradients go through NCCL.
#pragma once
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tinygpt {

struct RendezvousOptions {
  int rank = -1;
  int world_size = 0;
  std::string addr;  // host:port of rank 0 ([v6]:port for an IPv6 literal)
  // How long a rank waits for the others to come (and, after that, for each
  // broadcast).
  absl::Duration timeout = absl::Seconds(300);
  // What must be the same on every rank (the training flags); a rank whose
  // fingerprint differs from rank 0's is refused with both.
  std::string fingerprint;
  std::string host;  // this rank's host name (empty: gethostname)
};

class Rendezvous {
 public:
  static absl::StatusOr<std::unique_ptr<Rendezvous>> Join(const RendezvousOptions& options);
  virtual ~Rendezvous() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;  // among the ranks on this rank's host, in rank order
  // Rank 0's *bytes on every rank (what the others pass in is replaced).
  virtual absl::Status Broadcast(std::string* bytes) = 0;
  // Whether every rank this one is connected to is still there (no wait):
  // rank 0 sees every other rank, the others see rank 0.
  virtual absl::Status CheckPeers() = 0;
};

}  // namespace tinygpt
