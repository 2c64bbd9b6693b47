# syntax=docker/dockerfile:1
#
# pullgate's container image: a release build on Debian 12 (bookworm), copied into distroless's
# "cc" image for Debian 12. The binary links glibc, libgcc_s and libm dynamically (ring's C and
# assembly need libgcc), which that image has and "static" does not; the two stages share one
# Debian release, so the glibc the binary was linked against is the one it runs with.
# Nothing at run time needs a shell, and there is none: distroless has no /bin/sh.
#
#   docker build -t registry.example.com/pullgate:0.1.0 .
#
# Pin both base images by digest (`image:tag@sha256:…`) in your own registry for reproducible
# builds.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only what the binary is built from (.dockerignore keeps the rest of the tree out of the context),
# and benches/: Cargo.toml declares the benchmark, and cargo refuses a manifest whose declared
# targets are missing even when it builds only the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# --locked: exactly the dependency versions of Cargo.lock. The cache mounts keep the registry
# and the target directory between builds; the binary is copied out of the cached target.
# BuildKit shares a cache mount between the platforms of a multi-platform build (linux/amd64
# and linux/arm64 in .github/workflows/release.yml) unless its id differs, and the two builds
# run at the same time: each platform has caches of its own, and `sharing=locked` keeps two
# builds of one platform from writing them together.
ARG TARGETPLATFORM
RUN --mount=type=cache,id=pullgate-cargo-registry-${TARGETPLATFORM},target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=pullgate-target-${TARGETPLATFORM},target=/src/target,sharing=locked \
    cargo build --release --locked --bin pullgate \
    && install -D -m 0755 target/release/pullgate /out/pullgate

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="pullgate" \
      org.opencontainers.image.description="Kubernetes validating admission webhook that refuses workloads whose images cannot really be pulled" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/pullgate /usr/local/bin/pullgate
# distroless's "nonroot" user, by number so that `runAsNonRoot` can verify it without /etc/passwd.
USER 65532:65532
# 8443: the HTTPS webhook (POST /validate). 8080: plain-HTTP /healthz, /readyz and /metrics.
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/pullgate"]
CMD ["serve"]
