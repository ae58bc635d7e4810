#!/usr/bin/env bash
# The whole broadcast on this machine, on built-in defaults: a tracker, an
# edge, a source on the built-in test pattern (H.264 + AAC) and several
# viewers that share the stream with each other. Shows the viewers' status
# lines; Ctrl-C stops everything in order and leaves playable recordings.
#
#   ./scripts/live.sh                 # until Ctrl-C
#   SECS=20 VIEWERS=6 ./scripts/live.sh
#
# Watch while it runs: mpv http://127.0.0.1:8080/live.ts (viewer 1), or
# ffplay the recordings in $OUT afterwards.
#
# Installs what is missing (the FFmpeg libraries and clang to build, ffmpeg
# for ffprobe) with apt-get when run as root, or with sudo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VIEWERS=${VIEWERS:-4}
SECS=${SECS:-}
OUT=${OUT:-recordings}
KEY=${KEY:-demo-edge-key}
HTTP=${HTTP:-127.0.0.1:8080}

die() {
    echo "live: $*" >&2
    exit 1
}

PACKAGES=(pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev
    libavfilter-dev libavdevice-dev libswscale-dev libswresample-dev ffmpeg)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -ne 0 ]; then
    echo "== installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq || true
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}; install them and run again"
fi

echo "== building (release)"
cargo build --release -q -p p2p-apps --bin tracker --bin edge --bin source --bin client
BIN=target/release

for port in 7000 7100 9000 9100 "${HTTP##*:}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (a previous run still going?); stop it first"
    fi
done

mkdir -p "$OUT"
logs=$(mktemp -d)
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "== stopping"
    # Viewers first (they finish their recordings), then the rest.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -INT "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    rm -rf "$logs"
    if command -v ffprobe >/dev/null; then
        for f in "$OUT"/viewer-*.ts; do
            [ -s "$f" ] || continue
            d=$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$f" | head -1)
            n=$(ffprobe -v error -count_frames -select_streams v:0 \
                -show_entries stream=nb_read_frames -of default=nw=1:nk=1 "$f" | head -1)
            echo "== $f: ${d:-?} s, ${n:-?} video frames (ffplay $f)"
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # file pattern what
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$1" >&2
    die "$3 did not start"
}

echo "== tracker on 127.0.0.1:7000 (metrics http://127.0.0.1:9000/metrics)"
"$BIN/tracker" --tcp 127.0.0.1:7000 --udp 127.0.0.1:3478 --udp-alt 127.0.0.1:3479 \
    --edge-key "$KEY" --metrics 127.0.0.1:9000 >"$logs/tracker" 2>&1 &
pids+=($!)
wait_for "$logs/tracker" "tracker " tracker

echo "== edge on 127.0.0.1:7100 (metrics http://127.0.0.1:9100/metrics)"
"$BIN/edge" --tracker 127.0.0.1:7000 --edge-key "$KEY" --listen 127.0.0.1:7100 \
    --metrics 127.0.0.1:9100 >"$logs/edge" 2>&1 &
pids+=($!)
wait_for "$logs/edge" "listening on" edge

echo "== source: test pattern 640x360 25 fps + 440 Hz tone"
"$BIN/source" --tracker 127.0.0.1:7000 --edge-key "$KEY" >"$logs/source.out" 2>"$logs/source" &
pids+=($!)
wait_for "$logs/source.out" "room=" source
room=$(sed -n 's/^room=//p' "$logs/source.out" | head -1)
sleep 1

for i in $(seq "$VIEWERS"); do
    extra=()
    [ "$i" -eq 1 ] && extra=(--http "$HTTP")
    "$BIN/client" --tracker 127.0.0.1:7000 --room "$room" --out "$OUT/viewer-$i.ts" "${extra[@]}" \
        2> >(sed -u "s/^client: /viewer $i: /" >&2) &
    pids+=($!)
    sleep 0.5
done
echo "== room $room: $VIEWERS viewers; watch with: mpv http://$HTTP/live.ts   (Ctrl-C stops)"

if [ -n "$SECS" ]; then
    sleep "$SECS"
else
    while true; do sleep 1; done
fi
