# syntax=docker/dockerfile:1
# tinygpt image: a builder stage with the toolchain, the libraries' -dev
# packages and (for VARIANT=cuda) the CUDA toolkit; a runtime stage that
# carries only the binaries, the CUDA module and the shared libraries they load.
#
#   docker build -t tinygpt .                                    # CUDA (sm_90a + PTX)
#   docker build -t tinygpt:cpu --build-arg VARIANT=cpu \
#     --build-arg BUILD_IMAGE=ubuntu:24.04 --build-arg RUNTIME_IMAGE=ubuntu:24.04 .
#
# Without a registry (Debian 12 + podman, as scripts/container-test.sh does):
# deploy/podman/base-images.sh makes localhost/debian:bookworm (mmdebstrap) and
# localhost/tinygpt-cuda-runtime:13.0, then
#   podman build --build-arg VARIANT=cpu --build-arg BUILD_IMAGE=localhost/debian:bookworm \
#     --build-arg RUNTIME_IMAGE=localhost/debian:bookworm -t tinygpt:cpu .
#   podman build -v /usr/local/cuda-13.0:/usr/local/cuda:ro --build-arg BUILD_IMAGE=localhost/debian:bookworm \
#     --build-arg RUNTIME_IMAGE=localhost/tinygpt-cuda-runtime:13.0 -t tinygpt:cuda .   # the host's toolkit, bound in
# Compiles go through ccache in a build cache mount, so the CPU and CUDA
# variants compile the C++ once and a rebuild only what changed.
ARG BUILD_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS deps
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config ccache \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
      libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libopenblas-dev libsentencepiece-dev libboost-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

FROM deps AS build
ARG VARIANT=cuda
WORKDIR /src
COPY . .
# The build tree sits under /src, so ccache (base_dir /src) sees the same
# relative paths whichever variant, and whichever copy of the tree, compiles.
RUN --mount=type=cache,target=/ccache,id=tinygpt-ccache \
    export CCACHE_DIR=/ccache CCACHE_BASEDIR=/src CCACHE_COMPILERCHECK=content CCACHE_MAXSIZE=5G \
    && ccache --zero-stats >/dev/null && cmake -S . -B /src/build-image -DCMAKE_BUILD_TYPE=Release -DTINYGPT_BUILD_TESTS=OFF \
      -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache \
      -DTINYGPT_CUDA=$([ "$VARIANT" = cpu ] && echo OFF || echo ON) \
    && cmake --build /src/build-image -j"$(nproc)" --target tinygpt tinygpt-client tinygpt_sentencepiece \
    && if [ "$VARIANT" != cpu ]; then cmake --build /src/build-image -j"$(nproc)" --target tinygpt_cuda; fi \
    && (ccache --show-stats | grep -E 'Hits|Misses' || true)
# Stage the binaries, the dlopen()ed modules (SentencePiece; CUDA if built) beside
# them, and every shared library they need that is not glibc's or the CUDA
# runtime's (the runtime image has those).
RUN mkdir -p /out/bin /out/lib \
    && cp /src/build-image/cli/tinygpt /src/build-image/client/tinygpt-client /src/build-image/cli/libtinygpt_*.so /out/bin/ \
    && for f in /out/bin/*; do ldd "$f" | awk '$3 ~ /^\// {print $3}'; done | sort -u \
       | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas[^/]*)\.so' \
       | xargs -r cp -L -t /out/lib/

FROM ${RUNTIME_IMAGE}
RUN groupadd --system tinygpt && useradd --system --gid tinygpt --uid 10001 --home /models tinygpt \
    && mkdir -p /models && chown tinygpt:tinygpt /models
COPY --from=build /out/bin/ /opt/tinygpt/bin/
COPY --from=build /out/lib/ /opt/tinygpt/lib/
# TINYGPT_ADDRESS_FILE: the server writes the address it listens on there and
# `tinygpt-client` without --target reads it, so the HEALTHCHECK follows
# whatever --host/--port the container was started with. (Kubernetes with a
# read-only root filesystem: mount an emptyDir on /tmp; its probes are gRPC
# probes on the port anyway.)
ENV PATH=/opt/tinygpt/bin:$PATH LD_LIBRARY_PATH=/opt/tinygpt/lib TINYGPT_ADDRESS_FILE=/tmp/tinygpt-serve.address
USER tinygpt
WORKDIR /models
EXPOSE 50051 8000 9464
# The standard gRPC health service: healthy once the model is loaded and
# serving; NOT_SERVING (unhealthy) while draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["tinygpt-client", "health"]
ENTRYPOINT ["tinygpt"]
CMD ["serve", "--checkpoint", "/models/seed.safetensors", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464"]
