# syntax=docker/dockerfile:1
# The one image of the project: `cdp operator` and the data-plane roles
# (`cdp ingest|matcher|api|feeds`) all run from it.
#
#   docker build -t ghcr.io/cdp-operator/cdp:0.1.0 .
#
# Build arguments:
#   RUNTIME_BASE  the image the binary runs on: distroless's cc (glibc, libgcc and OpenSSL's
#                 libssl3, which librdkafka uses for TLS to Kafka brokers; no shell, no package
#                 manager). Any glibc and libssl3 at least as new as the builder's (Debian 12)
#                 will do; e2e/images/ uses a minimal Debian where no registry is reachable
#                 (its CA bundle brings libssl3).
#   BINARY        `build` compiles the release binary here; `prebuilt` takes a `cdp` binary from
#                 the root of the build context instead (a one-file context: e2e/images/cdp.sh).
#
# Needs BuildKit (the default builder of current Docker and of buildx/Podman) or buildah: the
# cache mounts keep the crate registry and target/ between builds, so a source change does not
# rebuild every dependency.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cdp \
    && cp target/release/cdp /cdp

FROM scratch AS prebuilt
COPY cdp /cdp

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM ${RUNTIME_BASE} AS runtime
COPY --from=binary /cdp /cdp
# 65532 is distroless's "nonroot" user. Numeric, so that Kubernetes can check
# runAsNonRoot without an /etc/passwd lookup.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/cdp"]
CMD ["operator"]
