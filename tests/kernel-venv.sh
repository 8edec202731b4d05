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
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q ipykernel bash_kernel
"$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
"$venv/bin/python" -m bash_kernel.install --sys-prefix >/dev/null
ls "$venv/share/jupyter/kernels"
