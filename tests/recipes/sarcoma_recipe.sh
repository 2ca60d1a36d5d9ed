#!/usr/bin/env bash
# RETIRED: configs/sarcoma/recipe.json (`nstseg reproduce`) is the recipe now. This is the shell
# recipe as it last was, kept so that tests/recipes/test_sarcoma_recipe.py can check that the JSON
# runs every one of its steps with the same arguments; it is never run for real.
# The real-tumour (sarcoma) model: the exact commands behind weights/sarcoma.* and the figures in
# its model card and docs/sarcoma.md. Run from the repository root; every step resumes.
#   bash configs/sarcoma/recipe.sh train default     # CDI-NSTSEG, stage 1 (from scratch)
#   bash configs/sarcoma/recipe.sh train unet        # the U-Net: same data, budget and seed
#   bash configs/sarcoma/recipe.sh stage2 default    # stage 2 from stage 1's best epoch:
#   bash configs/sarcoma/recipe.sh stage2 unet       #   lesions up to the crop's edge, lower lr
#   bash configs/sarcoma/recipe.sh stage2z default   # stage 2 as above, plus half the crops at
#                                                    #   the tumour's ends along z
#   bash configs/sarcoma/recipe.sh mae               # the MAE on normal tissue only
#   bash configs/sarcoma/recipe.sh tune default      # operating point on the validation patients
#   (CKPT=final ... tune default-stage2: the same for a run's last epoch)
#   bash configs/sarcoma/recipe.sh auroc MAE.json    # residual-map AUROC, validation patients
#   bash configs/sarcoma/recipe.sh bundle            # weights/sarcoma.* + MODEL_CARD_sarcoma.md
#   (SEG=default-stage2 CMP=unet-stage2 OUT=DIR ... bundle: the stage-2 pair, its weights, card
#   and sarcoma.md into DIR instead of over the shipped ones; tune both first)
# A later stage continues from the committed weights: INIT=sarcoma bash ... train default
# (the model card adds the stages up). WORK (default runs/sarcoma) holds the runs. Run it with the
# project's environment active (`. .venv/bin/activate`, as scripts/setup.sh makes it).
set -euo pipefail
DATA=${DATA:-../shared/data/sts}
SPLIT=configs/sarcoma/split.json
WORK=${WORK:-runs/sarcoma}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# Stage 1 budget: 30 epochs x 100 steps x batch 8 = 24 000 crops of 96 x 96 at 1.5 mm.
TRAIN=(--data "$DATA" --split-file "$SPLIT" --base-width 16 --context-mm 3.0
  --working-spacing-mm 1.5 --crop-size 96 --positive-fraction 0.5 --noise-hu 5 --dice-weight 1
  --region-loss batch --epochs "${EPOCHS:-30}" --steps-per-epoch 100 --batch-size 8 --lr 1e-3
  --seed 2024 --val-max-slices 60 --no-progress)

case "${1:-}" in
  train)
    variant=${2:?variant: default, unet, single-scale, no-glm, no-lfm, no-sfm}
    out="$WORK/$variant"
    extra=()
    [ -f "$out/train_config.json" ] && extra+=(--resume)
    [ -n "${INIT:-}" ] && extra+=(--init "$INIT")
    exec nstseg train "${TRAIN[@]}" --variant "$variant" --out "$out" "${extra[@]}"
    ;;
  stage2)
    # Stage 2: 20 epochs x 100 steps x batch 8 = 16 000 crops more, from stage 1's best epoch,
    # peak lr 5e-4, and positive crops that put the tumour anywhere up to the crop's edge
    # (stage 1 kept it in the central half and the model learnt to expect it in the middle).
    variant=${2:?variant: default, unet, ...}
    out="$WORK/$variant-stage2"
    extra=()
    if [ -f "$out/train_config.json" ]; then extra+=(--resume); else
      extra+=(--init "$WORK/$variant/best.json"); fi
    exec nstseg train "${TRAIN[@]}" --epochs 20 --lr 5e-4 --positive-jitter 0.5 \
      --variant "$variant" --out "$out" "${extra[@]}"
    ;;
  stage2z)
    # Stage 2 with z-edge sampling: the same budget, lr and jitter as stage2, and half the crops
    # drawn at each tumour's ends along z (its first and last 2 slices; without lesion, the 2
    # slices beyond, cut where it lies), against stage 1's mask running on past the contour.
    variant=${2:?variant: default, unet, ...}
    out="$WORK/$variant-stage2z"
    extra=()
    if [ -f "$out/train_config.json" ]; then extra+=(--resume); else
      extra+=(--init "$WORK/$variant/best.json"); fi
    exec nstseg train "${TRAIN[@]}" --epochs 20 --lr 5e-4 --positive-jitter 0.5 \
      --z-edge-fraction 0.5 --z-edge-slices 2 --variant "$variant" --out "$out" "${extra[@]}"
    ;;
  mae)
    extra=()
    [ -f "$WORK/mae/train_config.json" ] && extra+=(--resume)
    exec nstseg pretrain-mae --data configs/mae/sarcoma_sources.json --out "$WORK/mae" \
      --working-spacing-mm 1.5 --crop-size 128 --set patch_size=8 --epochs "${MAE_EPOCHS:-10}" \
      --steps-per-epoch 100 --batch-size 16 --seed 2024 --no-progress "${extra[@]}"
    ;;
  tune)
    variant=${2:?variant}
    # CKPT=final tunes the run's last epoch instead of its best (by validation Dice) one.
    ckpt=${CKPT:-best}
    out="$WORK/$variant/tune_val"
    [ "$ckpt" = best ] || out="${out}_$ckpt"
    exec nstseg tune-postprocess "$WORK/$variant/$ckpt.json" --data "$DATA" --split-file "$SPLIT" \
      --split val --objective dice --max-fp-per-scan 1 --device cpu --out "$out"
    ;;
  auroc)
    exec nstseg residual-auroc "${2:?MAE checkpoint}" --data "$DATA" --split-file "$SPLIT" \
      --split val --out "${3:-$WORK/auroc}"
    ;;
  bundle)
    seg=${SEG:-default} cmp=${CMP:-unet}
    exec python scripts/bundle_sarcoma.py --seg "$WORK/$seg/best.json" \
      --tune "$WORK/$seg/tune_val/tune.json" \
      --compare "U-Net=$WORK/$cmp/best.json:$WORK/$cmp/tune_val/tune.json" \
      --data "$DATA" --split-file "$SPLIT" --work "$WORK/bundle" --offcentre \
      ${OUT:+--weights-dir "$OUT" --docs "$OUT"}
    ;;
  *)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac
