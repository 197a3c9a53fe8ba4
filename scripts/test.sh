#!/usr/bin/env bash
# The test command: the whole suite on the CPU, with the chain tests run against SQLite and a
# real PostgreSQL server that this script starts (installing Debian's postgresql if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
if [ -z "${T2VSIM_TEST_PG_URL:-}" ] && [ "${T2VSIM_SKIP_PG:-0}" != 1 ]; then
  # shellcheck source=scripts/pg.sh
  source scripts/pg.sh
  pg_start
  trap pg_stop EXIT
fi
# vLLM-Omni's own environment for tests/test_vllm_omni.py (kept between runs: 4.4 GB, a few minutes
# the first time, seconds after).
t0=$(date +%s)
bash scripts/vllm_omni_env.sh
echo "vllm-omni environment: $(( $(date +%s) - t0 )) s"
"$BIN/python" -m pytest -q -p no:cacheprovider "$@"
