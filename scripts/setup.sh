#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with torch (pinned, CPU-capable) and tlsearch[dev].
# A second run reuses the environment and only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tlsearch-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: left free, a resolver picks a newer CUDA build of several GB.
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
# Fashion-MNIST for the quickstart, from Debian's package, when we may install it (optional: digits is bundled).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist; the quickstart will use digits"
fi
