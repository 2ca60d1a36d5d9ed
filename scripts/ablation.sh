#!/usr/bin/env bash
# Train variants (ablations, the U-Net) through the bundled model's two phases, choose each
# one's operating point on validation, evaluate it on the test split at that point and at the
# bundled one, and print its rows for docs/comparison.md and the model card.
#   scripts/ablation.sh WORK VARIANT...      e.g. scripts/ablation.sh runs/abl no-sfm
# Environment: DEVICE (auto), DATA (the source scans; train_bundled.py's default: ../shared),
# LESION_WORKERS (make-lesions processes), INTO (see the end), P1_ARGS / P2_ARGS (extra
# train_bundled.py arguments of each phase, after the recipe's, so they win: a smoke run sets a
# tiny budget there), ONLINE (1: both phases train on lesions inserted on the fly, `train
# --online-lesions`, and the rows' names say so; 0, the default: on the stored copies),
# HYPODENSE (share of dark lesions in the training set, e.g. 0.5; default make-lesions' 0.8,
# as the evaluation set keeps: rows' names give it when set).
# WORK/p1 holds the data and phase 1, WORK/p2 phase 2 with tune_val/ and eval_test/ per
# variant, WORK/p2/evals/VARIANT_d4 the bundled point, WORK/rows.md the rows.
# Run it again after an interruption: finished steps are kept and training resumes from its
# last epoch.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 WORK VARIANT..." >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
W=$($PY -c 'import sys, pathlib; print(pathlib.Path(sys.argv[1]).resolve())' "$1")
shift
VARIANTS=("$@")
source scripts/variant_names.sh
for V in "${VARIANTS[@]}"; do
  [ -n "${NAME[$V]:-}" ] || { echo "unknown variant $V (one of ${!NAME[*]})" >&2; exit 2; }
done
COMMON=(--device "${DEVICE:-auto}" --mae-weights src/napari_nstseg/weights/mae.json)
[ -n "${DATA:-}" ] && COMMON+=(--data "$DATA")
[ -n "${LESION_WORKERS:-}" ] && COMMON+=(--lesion-workers "$LESION_WORKERS")
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
P1=(${P1_ARGS:-})
# shellcheck disable=SC2206
P2=(${P2_ARGS:-})
ONL=()
TAG=""
case "${ONLINE:-0}" in
  0) ;;
  1) ONL=(--online-lesions); TAG=", lesions inserted on the fly" ;;
  *) echo "ONLINE is 0 or 1, got '$ONLINE'" >&2; exit 2 ;;
esac
if [ -n "${HYPODENSE:-}" ]; then
  PCT=$($PY -c 'import sys; f = float(sys.argv[1]); assert 0 <= f <= 1; print(f"{100 * f:g}")' \
    "$HYPODENSE" 2>/dev/null) \
    || { echo "HYPODENSE is the share of dark training lesions, 0 to 1, got '$HYPODENSE'" >&2; exit 2; }
  ONL+=(--train-hypodense-fraction "$HYPODENSE")
  TAG+=", $PCT % of training lesions dark"
fi

# Phase 1: 55 x 150 x batch 8 of 2-D crops, lr 3e-3, 70 % crops with lesion, IoU and Dice per
# crop (train_bundled.py's defaults); also makes the data folders.
$PY scripts/train_bundled.py --work "$W/p1" --variants "${VARIANTS[@]}" "${COMMON[@]}" \
  --train-only "${ONL[@]}" "${P1[@]}"
# Phase 2: from phase 1's last weights, 40 x 150 x 8 of 2.5-D crops (planes +-3 mm), lr 1e-3,
# 50 % crops with lesion, IoU and Dice over the batch; then tune-postprocess and evaluate.
mkdir -p "$W/p2"
ln -sfn "$W/p1/lesions" "$W/p2/lesions"
ln -sfn "$W/p1/train" "$W/p2/train"
INITS=()
for V in "${VARIANTS[@]}"; do INITS+=(--init "$V=$W/p1/runs/$V/final.json"); done
$PY scripts/train_bundled.py --work "$W/p2" --variants "${VARIANTS[@]}" "${COMMON[@]}" \
  "${INITS[@]}" --epochs 40 --lr 1e-3 --positive-fraction 0.5 --region-loss batch \
  --context-mm 3 --tune-data "$W/p1/tuneval" "${ONL[@]}" "${P2[@]}"
# The bundled point (threshold 0.5, lesions at least 4 mm along z), where every row of the
# comparison is also measured.
ROWS=()
for V in "${VARIANTS[@]}"; do
  out=$W/p2/evals/${V}_d4
  [ -f "$out/evaluation.json" ] || $PY -m napari_nstseg.cli evaluate "$W/p2/runs/$V/final.json" \
    --data "$W/p1/lesions" --split test --out "$out" --device "${DEVICE:-auto}" \
    --threshold 0.5 --min-lesion-mm 0 --min-depth-mm 4
  ROWS+=("${NAME[$V]}$TAG, same phases=$out/evaluation.json")
  ROWS+=("${NAME[$V]}$TAG at its validation-tuned point=$W/p2/runs/$V/eval_test/evaluation.json")
done
# INTO: markdown files whose tables get the rows (docs/comparison.md and the model card).
# shellcheck disable=SC2086  # INTO is a list of paths
$PY scripts/comparison_rows.py "${ROWS[@]}" ${INTO:+--into $INTO} | tee "$W/rows.md"
