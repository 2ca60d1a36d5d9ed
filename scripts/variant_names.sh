# How the comparison tables name each variant (sourced by bundle_default.sh and ablation.sh):
# NAME[variant] = its title in the registry (src/napari_nstseg/models/variants.py).
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -A NAME=()
while IFS=$'\t' read -r _name _title; do
  NAME[$_name]=$_title
done < <("${PYTHON:-python}" -c 'from napari_nstseg.models.variants import list_variants
for v in list_variants():
    print(f"{v.name}\t{v.title}")')
[ ${#NAME[@]} -gt 0 ] || { echo "variant_names.sh: could not read the variant registry" >&2; exit 2; }
unset _name _title
