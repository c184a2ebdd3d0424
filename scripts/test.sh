#!/usr/bin/env bash
# Set up (first run) and run the test suite: creates .venv, installs latentae with its test extras from the
# package registry, runs pytest offline. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k export`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest -q "$@"
