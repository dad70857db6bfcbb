#!/usr/bin/env bash
# The README's two commands:
#   bash scripts/lmix.sh demo   set up .venv from scratch if needed, then run the embedded demo
#   bash scripts/lmix.sh test   set up if needed, then lint, type-check, run the test suite and the wheel smoke test
#                               (`test ARGS...` passes ARGS to pytest and skips the wheel smoke test)
# Also: `setup` (only set up), `run ARGS...` (the lmix CLI inside the venv), `wheel-smoke` (only the wheel test).
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

# Build the lmix and lmix-hf wheels, install them (not editable) into a clean virtual environment outside the
# checkout, and use them from an empty directory the way a user would: list the components and the shipped recipes,
# run the demo at its micro size, then train one step from a shipped recipe on the demo's outputs. Fails on any
# Python warning in the output (lmix's own code must not cause any).
wheel_smoke() {
    local root tmp
    root=$(pwd)
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmix-wheel-smoke.XXXXXX")
    WHEEL_SMOKE_TMP=$tmp
    trap 'rm -rf "$WHEEL_SMOKE_TMP"' EXIT
    # Build from a copy of the sources, so stale build/ folders in the checkout cannot leak into the wheels.
    mkdir "$tmp/src" "$tmp/wheels" "$tmp/work"
    tar -cf - --exclude=./.venv --exclude=./.git --exclude=./runs --exclude=build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=wandb . | tar -xf - -C "$tmp/src"
    "$VENV/bin/python" -m pip wheel -q --no-deps -w "$tmp/wheels" "$tmp/src" "$tmp/src/backends/hf" >/dev/null
    "$PY" -m venv "$tmp/venv"
    # torch first and pinned, as in setup: the local CPU wheel, never the CUDA build.
    "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "$tmp"/wheels/*.whl
    (
        cd "$tmp/work"
        export PATH="$tmp/venv/bin:$PATH" WANDB_MODE=disabled
        unset PYTHONPATH
        where=$(python -c 'import lmix_core, lmix_hf; print(lmix_core.__file__, lmix_hf.__file__)')
        case "$where" in "$tmp/venv/"*" $tmp/venv/"*) ;; *) echo "wheel-smoke: imported from $where" >&2; exit 1 ;; esac
        # both installed packages carry their type information (PEP 561), for plugins that type-check against them
        python -c 'import importlib.resources as r; assert all(r.files(p).joinpath("py.typed").is_file() for p in ("lmix_core", "lmix_hf"))'
        set -x
        lmix components > components.txt && grep -q "lmix-hf 0.1.0" components.txt
        lmix recipes > recipes.txt && grep -q "demo:grpo_logit_average" recipes.txt
        lmix demo --smoke 2> demo.err || { cat demo.err >&2; exit 1; }
        lmix run demo:grpo_logit_average --out runs/mine train.steps=1 train.prompts_per_step=2 \
            train.group_size=2 sampling.max_new_tokens=8 2> run.err || { cat run.err >&2; exit 1; }
        set +x
        test -f runs/demo/summary.json && test -f runs/mine/summary.json
        if grep -hE "[A-Za-z]*Warning:" demo.err run.err; then
            echo "wheel-smoke: the runs above printed Python warnings" >&2
            exit 1
        fi
    )
    cd "$root"
    echo "wheel-smoke: ok (lmix and lmix-hf wheels, installed in a clean venv, used from an empty directory)"
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    demo) ensure; exec "$VENV/bin/lmix" demo "$@" ;;
    test)
        ensure
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        [ -x "$VENV/bin/mypy" ] || setup  # a venv set up before mypy joined the test extra
        "$VENV/bin/mypy" --cache-dir "$VENV/.mypy_cache"  # type-check lmix_core and the backends ([tool.mypy])
        HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} "$VENV/bin/python" -m pytest -q "$@"
        if [ $# -eq 0 ]; then wheel_smoke; fi  # with pytest arguments (a subset), only the tests
        ;;
    wheel-smoke) ensure; wheel_smoke ;;
    run) ensure; exec "$VENV/bin/lmix" "$@" ;;
    *) echo "usage: bash scripts/lmix.sh {demo|test|setup|wheel-smoke|run ARGS...}" >&2; exit 2 ;;
esac
