# Builds the whole workspace and, by default, runs the test suite.
#
#   docker build -t p2p-live .
#   docker run --rm --ulimit nofile=65536:65536 p2p-live
#
# One test opens ~20,000 sockets, hence the --ulimit. The network-lab tests
# (NAT classification, punching, chat, RUDP under loss, the live broadcast
# across NATs) create namespaces and
# nftables rules: add --privileged to run them; without it they print SKIPPED.
FROM rust:1-bookworm

# The same system packages as .ci/run.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        pkg-config iproute2 nftables clang libclang-dev \
        libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev \
        libavdevice-dev libswscale-dev libswresample-dev ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src/p2p-live
COPY . .

RUN cargo build --workspace --release --all-targets --locked

CMD ["cargo", "test", "--workspace", "--release"]
