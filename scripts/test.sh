#!/usr/bin/env bash
# Set everything up and run the whole test suite headless (what CI runs): lint, then pytest under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/gui-deps.sh
bash scripts/setup.sh testing
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks scripts experiments docs
ruff format --check src tests benchmarks scripts experiments docs
# pytest-xvfb starts a virtual display for the napari viewer tests.
# --durations: the slowest tests in every CI log, the CI budget (30 min on 2 cores) being close.
python -m pytest --durations=25 "$@"
