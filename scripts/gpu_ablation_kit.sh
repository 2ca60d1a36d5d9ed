#!/usr/bin/env bash
# Before copying this tree to a GPU machine that cannot reach a package index: put what such a
# machine usually lacks into the ignored folders .whl/ (wheels of the pure-Python packages
# nibabel and pysodmetrics, at the versions installed here, the ones tested) and .data/ (the
# source CT scans of the recipe). Copy the tree with both folders, then run
# scripts/gpu_ablation.sh there. Environment: PYTHON (.venv/bin/python), DATA (the scans;
# ../shared/data/totalsegmentator), TARGET_PYTHON (the GPU machine's Python, 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.data/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .data/totalsegmentator
PY=${PYTHON:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "nibabel==$($PY -c 'import nibabel; print(nibabel.__version__)')" \
  "pysodmetrics==$($PY -c 'from importlib.metadata import version; print(version("pysodmetrics"))')"
SRC=${DATA:-../shared/data/totalsegmentator}
cp "$SRC"/{example_ct.nii.gz,ct_cropped.nii.gz,example_seg.nii.gz,LICENSE} .data/totalsegmentator/
du -sh .whl .data
