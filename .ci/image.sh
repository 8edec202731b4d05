#!/usr/bin/env bash
# Builds the static binary and the FROM-scratch image (offline path, with
# buildah: no Docker engine needed), then runs the binary from the unpacked
# image, chrooted into the image's empty root: no shell, no /etc, no /tmp.
# Also validates the deployment examples.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=x86_64-unknown-linux-gnu
BIN=target/$TARGET/release/execd
# Fully static, and not position-independent: a static-PIE carries a relocation table of a
# few hundred KB for no gain in a sandbox daemon (stack, heap and mmap stay randomised).
STATIC_RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"

echo "--- static release build"
RUSTFLAGS="$STATIC_RUSTFLAGS" cargo build --release --target "$TARGET" --bin execd
if ldd "$BIN" 2>&1 | grep -q "=>"; then
  echo "FAIL: $BIN is dynamically linked"; ldd "$BIN"; exit 1
fi
echo "static: yes; size: $(stat -c %s "$BIN") bytes (budget 5500000, every feature)"

if ! command -v buildah >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "--- installing buildah"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
  else
    echo "SKIP image build: buildah is not installed and cannot be installed here"; exit 0
  fi
fi
BUILDAH=(buildah --storage-driver vfs)

echo "--- buildah bud --target prebuilt"
"${BUILDAH[@]}" bud --isolation chroot --target prebuilt -t localhost/execd:ci . >/dev/null
ports=$("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.ExposedPorts}}' localhost/execd:ci)
[[ $ports == *44772* ]] || { echo "FAIL: port 44772 not exposed: $ports"; exit 1; }

ctr=$("${BUILDAH[@]}" from localhost/execd:ci)
mnt=$("${BUILDAH[@]}" mount "$ctr")
# Never `kill` an empty pid: `kill 0` would signal this whole process group, CI included.
cleanup() {
  "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  if [[ -n ${pid:-} ]]; then kill "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

files=$(cd "$mnt" && find . -type f | sort | tr '\n' ' ')
[[ $files == "./execd ./licenses/LICENSE " ]] || { echo "FAIL: unexpected image contents: $files"; exit 1; }
echo "image contents: $files"

echo "--- run from the image root (chroot)"
out=$(mktemp)
chroot "$mnt" /execd --port 0 --bind 127.0.0.1 --log-level 3 >"$out" &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$out" && break; sleep 0.05; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$out")
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/ping")
[[ $code == 200 ]] || { echo "FAIL: /ping answered $code"; exit 1; }
events=$(curl -s "http://$addr/command" -d '{"argv":["/execd","--version"]}')
grep -q '"text":"execd ' <<<"$events" || { echo "FAIL: command output missing: $events"; exit 1; }
grep -q '"type":"execution_complete"' <<<"$events" || { echo "FAIL: no completion: $events"; exit 1; }
# No shell in the image: a shell command fails cleanly, with the cause.
events=$(curl -s "http://$addr/command" -d '{"command":"echo hi"}')
grep -q '"evalue":"127"' <<<"$events" || { echo "FAIL: shell-less command: $events"; exit 1; }
kill -TERM "$pid"; wait "$pid"; pid=
echo "image run: ok (ping, argv command, clean failure without a shell, graceful exit)"

echo "--- deployment examples"
sh -n deploy/docker/run.sh
VENV=target/sdk-venv
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q kubernetes-validate==1.37.0
"$VENV/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml
