#!/usr/bin/env bash
# Makes the venv of Jupyter kernels the /code tests use: ipykernel and
# bash_kernel, with their kernelspecs under <venv>/share/jupyter/kernels.
# Point JUPYTER_PATH at <venv>/share/jupyter to use them.
#
#   EXECD_KERNEL_VENV  where (default: <repo>/target/kernel-venv)
#   PYTHON             interpreter for the venv (default: python3)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EXECD_KERNEL_VENV:-$repo/target/kernel-venv}"
py="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv"; then
    # Debian's system python splits venv support into its own package.
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      rm -rf "$venv"
      "$py" -m venv "$venv"
    else
      echo "kernel-venv.sh: cannot create a venv with $py" >&2
      exit 2
    fi
  fi
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q ipykernel==7.4.0 bash_kernel==0.10.0
"$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
"$venv/bin/python" -m bash_kernel.install --sys-prefix >/dev/null
ls "$venv/share/jupyter/kernels"
