# syntax=docker/dockerfile:1
# The one image of the project: `cdp operator` and the data-plane roles
# (`cdp ingest|matcher|api|feeds`) all run from it.
#
#   docker build -t ghcr.io/cdp-operator/cdp:0.1.0 .
#
# Needs BuildKit (the default builder of current Docker and of buildx/Podman): the
# cache mounts keep the crate registry and target/ between builds, so a source change
# does not rebuild every dependency.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cdp \
    && cp target/release/cdp /cdp

# distroless/cc: glibc and libgcc for the Rust binary; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /cdp /cdp
# 65532 is distroless's "nonroot" user. Numeric, so that Kubernetes can check
# runAsNonRoot without an /etc/passwd lookup.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/cdp"]
CMD ["operator"]
