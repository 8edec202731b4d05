#!/usr/bin/env bash
# Fuzzing. CI runs a short smoke of every target (FUZZ_SECONDS each, default 10);
# a longer run is the same script with a larger FUZZ_SECONDS, e.g.
#   FUZZ_SECONDS=300 bash .ci/fuzz.sh
# Needs the nightly toolchain (present on these machines) and cargo-fuzz
# (installed here if missing). A crash leaves its input under fuzz/artifacts/
# and fails the run; turn it into a regression test beside the code and keep
# the input in fuzz/regressions/<target>/ (tracked): every run starts from
# those seeds as well as its own corpus (fuzz/corpus/<target>/, untracked), so
# an old crash comes back at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH=${FUZZ_SECONDS:-10}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "SKIP fuzzing: no nightly toolchain on this machine"; exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  echo "--- fuzz $target (${SECONDS_EACH}s)"
  # New inputs go to the first directory (the corpus); the seeds are only read.
  corpora=("$PWD/fuzz/corpus/$target")
  mkdir -p "${corpora[0]}"
  if [[ -d fuzz/regressions/$target ]]; then corpora+=("$PWD/fuzz/regressions/$target"); fi
  cargo +nightly fuzz run -O "$target" "${corpora[@]}" -- -max_total_time="$SECONDS_EACH" -max_len=4096 2>&1 \
    | grep -E '^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|thread .* panicked)' || true
  # cargo fuzz exits non-zero on a crash; re-check through the artifacts directory.
  if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
    echo "FAIL: $target found a crashing input:"; ls "fuzz/artifacts/$target"; exit 1
  fi
done
echo "fuzz smoke: every target ran ${SECONDS_EACH}s without a crash"
