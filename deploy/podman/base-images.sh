#!/usr/bin/env bash
# Builds, without any registry, the local base images that the Dockerfile and
# the compose file are built from here (each only if it is not there yet, so a
# second run reuses them):
#   localhost/debian:bookworm             mmdebstrap minbase + ca-certificates, from Debian's mirrors
#   localhost/tinygpt-cuda-runtime:13.0   that + the CUDA runtime libraries the CUDA module loads
#                                         (libcublasLt), copied from this machine's toolkit
# usage: deploy/podman/base-images.sh [--cuda]      (as root; needs podman, buildah, mmdebstrap)
# TINYGPT_CUDA_HOME: the toolkit to copy from (default /usr/local/cuda).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
debian=localhost/debian:bookworm
cuda_runtime=localhost/tinygpt-cuda-runtime:13.0
cuda_home=$(readlink -f "${TINYGPT_CUDA_HOME:-/usr/local/cuda}")
std_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if podman image exists "$debian"; then
  echo "base-images: $debian exists, reused"
else
  tmp=$(mktemp -d /var/tmp/tinygpt-rootfs.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  start=$SECONDS
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --aptopt='APT::Install-Recommends "false"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    bookworm "$tmp/rootfs.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  # An imported image has no environment: give it the standard PATH, which the
  # Dockerfile's `ENV PATH=/opt/tinygpt/bin:$PATH` extends.
  podman import --quiet --change "ENV PATH=$std_path" --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$debian" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
  echo "base-images: built $debian with mmdebstrap in $((SECONDS - start)) s"
fi

if [[ "${1:-}" == --cuda ]]; then
  if podman image exists "$cuda_runtime"; then
    echo "base-images: $cuda_runtime exists, reused"
  else
    [[ -f $cuda_home/lib64/libcublasLt.so.13 ]] || { echo "base-images: no CUDA 13 toolkit at $cuda_home" >&2; exit 1; }
    start=$SECONDS
    c=$(buildah from --pull-never "$debian")
    trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
    # What the nvidia/cuda runtime images provide for libtinygpt_cuda.so (it
    # links the CUDA runtime statically); libcuda.so.1, the driver, comes
    # from the host through the NVIDIA container toolkit.
    buildah run "$c" -- mkdir -p /usr/local/cuda/lib64
    buildah copy --quiet "$c" "$cuda_home/lib64/libcublasLt.so.13" /usr/local/cuda/lib64/ >/dev/null
    buildah run "$c" -- sh -c 'ln -s libcublasLt.so.13 /usr/local/cuda/lib64/libcublasLt.so &&
      echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig'
    buildah config --env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=compute,utility \
      --label org.opencontainers.image.description="Debian 12 + CUDA 13 libcublasLt (local base for tinygpt's CUDA image)" "$c"
    buildah commit --quiet --rm "$c" "$cuda_runtime" >/dev/null
    trap - EXIT
    echo "base-images: built $cuda_runtime from $cuda_home in $((SECONDS - start)) s"
  fi
fi
