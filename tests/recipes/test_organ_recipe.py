"""The organ-mode recipe (configs/organ/recipe.json): what its data step asks make-lesions for."""

from __future__ import annotations

from pathlib import Path

from napari_nstseg.recipes.runner import Values, plan_command
from napari_nstseg.recipes.schema import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "configs/organ/recipe.json"


def _data_args(sets: dict[str, str]) -> list[str]:
    recipe = load_recipe(RECIPE)
    (planned,) = plan_command(recipe, "data", 0, Values(recipe, {"shared": "S", **sets}, {}))
    return list(planned.args)


def test_the_data_step_gives_training_the_blocks_that_hold_cb001_s_and_hcc048_s_organs():
    """CB_001's and HCC_048's first blocks (display z up) stay test, as the seed had them, and
    the next ones, with their organs, go to training; the other scans keep the seed's blocks."""
    args = _data_args({})
    orders = [args[i + 1] for i, a in enumerate(args) if a == "--block-order"]
    assert orders == [
        "S/tcia/Pancreas-CT-CB_001/ct.nii.gz=test,train,val",
        "S/tcia/HCC_048/ct.nii.gz=test,train,val",
    ]
    for scan in (o.split("=")[0] for o in orders):
        assert scan in args[: args.index("-o")]  # a scan the command is given
    seed = _data_args({"block_orders": ""})  # the second and third runs' split
    assert "--block-order" not in seed
    assert seed == args[: len(seed)] and args[len(seed) :][::2] == ["--block-order"] * 2
