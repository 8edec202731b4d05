#!/usr/bin/env bash
# Runs the SDK conformance suite: the Python SDK (pytest) and the npm SDK
# (node --test) against the execd binary, which must already be built.
#
#   EXECD_BIN   binary under test (default: <repo>/target/debug/execd)
#   SDK_VENV    Python venv to use/create (default: <repo>/target/sdk-venv)
#
# Exits non-zero if either runner fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export EXECD_BIN="${EXECD_BIN:-$repo/target/debug/execd}"
venv="${SDK_VENV:-$repo/target/sdk-venv}"

say() { printf '\n---- %s ----\n' "$*"; }

if [[ ! -x "$EXECD_BIN" ]]; then
  echo "run.sh: execd binary not found at $EXECD_BIN (run 'cargo build' or set EXECD_BIN)" >&2
  exit 2
fi
echo "execd binary: $EXECD_BIN"

# --- Python venv with the pinned SDK -------------------------------------
py="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv"; then
    # Debian's system python splits venv support into its own package.
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      rm -rf "$venv"
      "$py" -m venv "$venv"
    else
      echo "run.sh: cannot create a venv with $py" >&2
      exit 2
    fi
  fi
fi
say "pip install -r tests/sdk/requirements.txt"
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(opensandbox|pytest|httpx) '

# --- npm SDK -------------------------------------------------------------
say "npm ci (tests/sdk/js)"
(
  cd "$here/js"
  if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
  node -e 'const p=require("./node_modules/@alibaba-group/opensandbox/package.json"); console.log(p.name+" "+p.version)'
)

# --- run both, report both ------------------------------------------------
status=0

say "pytest tests/sdk (Python SDK)"
set +e
"$venv/bin/python" -m pytest "$here"
py_rc=$?
set -e
if [[ $py_rc -eq 5 ]]; then
  echo "pytest: no tests were collected (exit 5); not counted as a failure"
  py_rc=0
fi
[[ $py_rc -eq 0 ]] || status=1

say "node --test tests/sdk/js (npm SDK)"
set +e
(
  cd "$here/js"
  shopt -s nullglob
  files=(*.test.mjs *.test.js)
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "node: no JS test files"
    exit 0
  fi
  node --test "${files[@]}"
)
js_rc=$?
set -e
[[ $js_rc -eq 0 ]] || status=1

say "SDK conformance summary"
echo "python SDK (pytest): $([[ $py_rc -eq 0 ]] && echo ok || echo "FAILED (exit $py_rc)")"
echo "npm SDK (node --test): $([[ $js_rc -eq 0 ]] && echo ok || echo "FAILED (exit $js_rc)")"
exit $status
