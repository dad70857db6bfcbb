#!/usr/bin/env bash
# The README's two commands:
#   bash scripts/lmix.sh demo   set up .venv from scratch if needed, then run the embedded demo
#   bash scripts/lmix.sh test   set up if needed, then lint and run the whole test suite
# Also: `setup` (only set up), `run ARGS...` (the lmix CLI inside the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LMIX_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
    # torch first and pinned: the local CPU wheel, never the CUDA build.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e ".[test,bench]" -e backends/hf -e backends/megatron -e plugins/lmix-example-plugin
    touch "$VENV/.lmix-setup-done"
}

ensure() { [ -f "$VENV/.lmix-setup-done" ] || setup; }

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    demo) ensure; exec "$VENV/bin/lmix" demo "$@" ;;
    test)
        ensure
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    run) ensure; exec "$VENV/bin/lmix" "$@" ;;
    *) echo "usage: bash scripts/lmix.sh {demo|test|setup|run ARGS...}" >&2; exit 2 ;;
esac
