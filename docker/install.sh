#!/usr/bin/env bash
# Build steps shared by both targets of docker/Dockerfile (run as root during `docker build`).
#   install.sh system        OS packages, the t2vsim user, Python 3.11 and the virtualenv /opt/venv
#   install.sh dependencies  torch/torchvision from $T2VSIM_TORCH_INDEX, then every dependency of
#                            pyproject.toml at its requirements.lock version
#   install.sh project       the project itself (editable, no dependency changes) and a smoke check
set -euo pipefail

PYTHON_VERSION=3.11
# The Makefile's pins (torch is not in requirements.lock: it comes from a CUDA or CPU wheel index).
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
ROOT=/opt/t2vsim
VENV=/opt/venv
export UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1

case "${1:-}" in
  system)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends ca-certificates tini >/dev/null
    rm -rf /var/lib/apt/lists/*
    id -u t2vsim >/dev/null 2>&1 || useradd --create-home --uid 10001 --shell /bin/bash t2vsim
    uv python install "$PYTHON_VERSION"
    uv venv --python "$PYTHON_VERSION" "$VENV"
    ;;
  dependencies)
    : "${T2VSIM_TORCH_INDEX:?set T2VSIM_TORCH_INDEX to a PyTorch wheel index}"
    uv pip install --python "$VENV/bin/python" --index-url "$T2VSIM_TORCH_INDEX" \
      "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    # torch stays as installed: the constraint matches its local version (+cu130 / +cpu).
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > /tmp/torch-pins.txt
    uv pip install --python "$VENV/bin/python" -c "$ROOT/requirements.lock" -c /tmp/torch-pins.txt \
      -r "$ROOT/pyproject.toml"
    rm -f /tmp/torch-pins.txt
    ;;
  project)
    uv pip install --python "$VENV/bin/python" --no-deps -e "$ROOT"
    mkdir -p "$ROOT/runs" /models
    chown -R t2vsim "$ROOT/runs" /models
    "$VENV/bin/python" -c "import torch, diffusers, prefect, piq, av, sqlmodel, psycopg; \
import flows.experiment, flows.network, flows.poc, flows.regression; \
print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$VENV/bin/t2vsim" --help >/dev/null
    ;;
  *)
    echo "usage: install.sh system|dependencies|project" >&2
    exit 2
    ;;
esac
