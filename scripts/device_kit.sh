#!/usr/bin/env bash
# Here, before a GPU session's device run: put what the GPU machine lacks into the ignored
# folders .whl/ (wheels of the pure-Python packages missing there: nibabel, pysodmetrics) and
# .data/ (the source CT scans: ../shared does not travel), which the run's `carry` takes.
# Then: run(command="bash scripts/device_ablation.sh no-sfm", carry=[".whl", ".data"],
# timeout_s=600); see that script.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.data/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .data/totalsegmentator
# The versions installed here (setup.sh's .venv), the ones tested; both are pure Python.
PY=${PYTHON:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "nibabel==$($PY -c 'import nibabel; print(nibabel.__version__)')" \
  "pysodmetrics==$($PY -c 'from importlib.metadata import version; print(version("pysodmetrics"))')"
SRC=${DATA:-../shared/data/totalsegmentator}
cp "$SRC"/{example_ct.nii.gz,ct_cropped.nii.gz,example_seg.nii.gz,LICENSE} .data/totalsegmentator/
du -sh .whl .data
