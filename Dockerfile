# syntax=docker/dockerfile:1
# tinygpt image: a builder stage with the toolchain, the libraries' -dev
# packages and (by default) the CUDA toolkit; a runtime stage that carries only
# the binaries, the CUDA module and the shared libraries they load.
#
#   docker build -t tinygpt .                                    # CUDA (sm_90a + PTX)
#   docker build -t tinygpt:cpu --build-arg VARIANT=cpu \
#     --build-arg BUILD_IMAGE=ubuntu:24.04 --build-arg RUNTIME_IMAGE=ubuntu:24.04 .
ARG BUILD_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS build
ARG VARIANT=cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
      libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libopenblas-dev libsentencepiece-dev libboost-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DTINYGPT_BUILD_TESTS=OFF \
      -DTINYGPT_CUDA=$([ "$VARIANT" = cpu ] && echo OFF || echo ON) \
    && cmake --build /build -j"$(nproc)" --target tinygpt tinygpt-client tinygpt_sentencepiece \
    && (cmake --build /build -j"$(nproc)" --target tinygpt_cuda || [ "$VARIANT" = cpu ])
# Stage the binaries, the dlopen()ed modules (SentencePiece; CUDA if built) beside
# them, and every shared library they need that is not glibc's or the CUDA
# runtime's (the runtime image has those).
RUN mkdir -p /out/bin /out/lib \
    && cp /build/cli/tinygpt /build/client/tinygpt-client /build/cli/libtinygpt_*.so /out/bin/ \
    && for f in /out/bin/*; do ldd "$f" | awk '$3 ~ /^\// {print $3}'; done | sort -u \
       | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas[^/]*)\.so' \
       | xargs -r cp -L -t /out/lib/

FROM ${RUNTIME_IMAGE}
RUN groupadd --system tinygpt && useradd --system --gid tinygpt --uid 10001 --home /models tinygpt \
    && mkdir -p /models && chown tinygpt:tinygpt /models
COPY --from=build /out/bin/ /opt/tinygpt/bin/
COPY --from=build /out/lib/ /opt/tinygpt/lib/
ENV PATH=/opt/tinygpt/bin:$PATH LD_LIBRARY_PATH=/opt/tinygpt/lib
USER tinygpt
WORKDIR /models
EXPOSE 50051 8000 9464
# The standard gRPC health service: healthy once the model is loaded and
# serving; NOT_SERVING (unhealthy) while draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["tinygpt-client", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["tinygpt"]
CMD ["serve", "--checkpoint", "/models/seed.safetensors", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464"]
