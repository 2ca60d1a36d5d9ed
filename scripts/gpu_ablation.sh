#!/usr/bin/env bash
# scripts/ablation.sh for VARIANTs on a CUDA machine, detached, with its results copied into
# OUT. On a machine without a package index, prepare the tree first with
# scripts/gpu_ablation_kit.sh (.whl/ and .data/ travel with it), then there:
#   OUT=ablation-out bash scripts/gpu_ablation.sh no-sfm
# The chain runs detached in WORK (/tmp/abl), so a limit on this command's own time does not
# stop it; the command waits for it up to WAIT_S seconds (default 540), then copies what is done
# into OUT: status.txt, log.txt, rows.md, evals.tgz (evaluations, operating points, training
# logs) and weights_VARIANT.tgz (its phase-2 weights, else phase 1's). The same command again
# waits for the rest (a chain still running is not started twice; a finished one is not rerun).
# DEVICE=cpu with P1_ARGS/P2_ARGS of a tiny budget tries it on a CPU.
# ONLINE=1 in front of the command (it reaches ablation.sh) trains on lesions inserted on the fly;
# HYPODENSE=0.5 on training lesions half of them bright (docs/comparison.md, 'Dark and bright
# lesions'): OUT=ablation-out ONLINE=1 HYPODENSE=0.5 bash scripts/gpu_ablation.sh default unet.
# Back on the machine with the docs, with evals.tgz unpacked in E: the rows go into the docs'
# tables with
#   python scripts/comparison_rows.py "NAME, same phases=E/p2/evals/V_d4/evaluation.json" \
#     "NAME at its validation-tuned point=E/p2/runs/V/eval_test/evaluation.json" \
#     --into docs/comparison.md src/napari_nstseg/weights/MODEL_CARD.md
# (NAME from scripts/variant_names.sh, as rows.md spells them).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: OUT=FOLDER $0 VARIANT..." >&2; exit 2; }
: "${OUT:?set OUT, the folder the results are copied into}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/abl}
# The kit's wheels (scripts/gpu_ablation_kit.sh), when the tree brought them.
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
python3 -c 'import sys, torch
cuda = sys.argv[1] == "cuda"
assert torch.cuda.is_available() or not cuda, "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name() if cuda else "cpu")' "$DEVICE" \
  | tee "$OUT/status.txt"
if ! { [ -f $W/pid ] && kill -0 "$(cat $W/pid)" 2>/dev/null; } && [ ! -f $W/rows.md ]; then
  mkdir -p $W
  DEVICE=$DEVICE DATA=${DATA:-$PWD/.data/totalsegmentator} LESION_WORKERS=$(nproc) PYTHON=python3 \
    setsid nohup bash scripts/ablation.sh $W "$@" > $W/log.txt 2>&1 < /dev/null &
  echo $! > $W/pid
fi
end=$((SECONDS + ${WAIT_S:-540}))
while kill -0 "$(cat $W/pid)" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
if [ -f $W/rows.md ]; then echo done >> "$OUT/status.txt"; cp $W/rows.md "$OUT/"
elif kill -0 "$(cat $W/pid)" 2>/dev/null; then echo "still running" >> "$OUT/status.txt"
else echo "stopped before the end: see log.txt" >> "$OUT/status.txt"; fi
tail -c 200000 $W/log.txt > "$OUT/log.txt"
cd $W
shopt -s nullglob
tar czf "$OUT/evals.tgz" p2/evals p2/runs/*/eval_test/evaluation.json p2/runs/*/tune_val/tune.json \
  p?/runs/*/log.csv p?/runs/*/train_config.json p1/*/dataset.json 2>/dev/null || true
for V in "$@"; do
  for p in p2 p1; do
    if [ -f $p/runs/$V/final.json ]; then
      tar czf "$OUT/weights_$V.tgz" $p/runs/$V/final.{json,safetensors}
      break
    fi
  done
done
ls -la "$OUT"
