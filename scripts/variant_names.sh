# How the comparison tables name each variant (sourced by bundle_default.sh and ablation.sh).
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -A NAME=([default]="CDI-NSTSEG" [unet]="U-Net"
  [no-sfm]="CDI-NSTSEG without SFM (mean of the scales)" [no-glm]="CDI-NSTSEG without GLM"
  [no-lfm]="CDI-NSTSEG without LFM stages" [single-scale]="CDI-NSTSEG single scale (1.0x only)")
