# execd image: a single static binary in an empty filesystem.
#
#   buildah bud -t execd .                      # compiles in a Rust build stage
#   buildah bud --target prebuilt -t execd .    # offline: packages a binary built on the host by
#       RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
#         cargo build --release --target x86_64-unknown-linux-gnu --bin execd
#
# docker build works the same way (--target prebuilt for the offline path).

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

# Build stage: a fully static glibc binary (crt-static); it needs no libc at run time.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The link order of the code (see build.rs): it keeps idle RSS low.
COPY .ci/symbol-order.txt ./.ci/symbol-order.txt
COPY src ./src
COPY tests ./tests
COPY bench ./bench
RUN RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin execd \
 && cp target/x86_64-unknown-linux-gnu/release/execd /execd

# Offline path: the same final image around a binary already built on the host.
FROM scratch AS prebuilt
COPY target/x86_64-unknown-linux-gnu/release/execd /execd
COPY LICENSE /licenses/LICENSE
EXPOSE 44772
ENTRYPOINT ["/execd"]

# Default: the binary from the build stage.
FROM scratch
COPY --from=build /execd /execd
COPY LICENSE /licenses/LICENSE
EXPOSE 44772
ENTRYPOINT ["/execd"]
