#!/usr/bin/env bash
# Set everything up and run the main job: napari with the sample CT and the segmentation widget.
# With no display it runs the headless prediction on the sample and says where the output went.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
# shellcheck disable=SC1091
. .venv/bin/activate
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname -s)" = Darwin ]; then
  exec nstseg demo "$@"
else
  exec nstseg demo --headless "$@"
fi
