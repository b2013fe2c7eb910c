# syntax=docker/dockerfile:1
# The SensorFlow image: every binary in /usr/local/bin, run as the non-root user 65532:65532.
#
#   docker build -t sensorflow/sensorflow:0.1.0 .
#
# Same layout as scripts/build-images.sh, the route without Docker (docs/images.md):
# /usr/local/bin/{sensorflow-operator,window-processor,join-predict,gcs-sink,replay,sensorflow},
# debug info stripped, entrypoint /usr/local/bin/sensorflow-operator (the operator's and the
# pipelines' pods set `command` explicitly), CA bundle at /etc/ssl/certs/ca-certificates.crt.

# The toolchain the workspace is built and tested with (rustc 1.95.0).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# rdkafka (default features) builds its bundled librdkafka with its own configure script: a C
# compiler, make and perl; it links OpenSSL (`ssl` feature) and zlib dynamically. liblzma-sys
# builds xz statically; protoc comes from the protoc-bin-vendored crate. binutils for strip.
# Versions are those of the bookworm release the rust image is built on (not pinned).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      binutils build-essential libssl-dev perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what cargo reads: changes to charts, tests or docs do not invalidate the build.
COPY Cargo.toml Cargo.lock ./
COPY api api
COPY crates crates
COPY operator operator
COPY processors processors
COPY tools tools
# The target directory is a cache mount, so the binaries are copied out in the same step.
# ldd guard: the runtime image has glibc, libgcc_s and libssl3 but no zlib (copied below); a
# new shared library dependency fails the build here instead of at the pod's start.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked \
      -p sensorflow-operator -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink \
      --bin sensorflow-operator --bin window-processor --bin join-predict \
      --bin gcs-sink --bin replay --bin sensorflow; \
    mkdir -p /out/usr/local/bin; \
    for b in sensorflow-operator window-processor join-predict gcs-sink replay sensorflow; do \
      strip --strip-debug -o "/out/usr/local/bin/$b" "target/release/$b"; \
      ldd "target/release/$b" | awk '$2 == "=>" {print $1}' >> /tmp/needed; \
    done; \
    unexpected="$(sort -u /tmp/needed | grep -vxE 'libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libssl\.so\.3|libcrypto\.so\.3|libz\.so\.1' || true)"; \
    if [ -n "$unexpected" ]; then echo "new shared libraries, add them to the runtime stage: $unexpected" >&2; exit 1; fi; \
    libz="$(ldd target/release/gcs-sink | awk '$1 == "libz.so.1" {print $3}')"; \
    install -D -m 0644 "$(readlink -f "$libz")" "/out/usr/lib/$(gcc -print-multiarch)/libz.so.1"

# glibc, libgcc_s, libssl3, CA certificates, /etc/passwd with nonroot (65532), /tmp.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sensorflow-operator"]
