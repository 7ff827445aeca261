#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export PYTHONFAULTHANDLER=1  # a crash in native code still prints every thread's Python stack
.venv/bin/ruff check tlsearch tests benchmarks scripts
.venv/bin/mypy tlsearch
.venv/bin/mypy benchmarks/*.py scripts/*.py  # scripts a user runs by hand: a renamed helper fails here, not there
.venv/bin/pytest -q "$@"
