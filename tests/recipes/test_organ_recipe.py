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


def _step_args(step: str, index: int = 0) -> list[str]:
    recipe = load_recipe(RECIPE)
    (planned,) = plan_command(recipe, step, index, Values(recipe, {"work": "W"}, {}))
    return list(planned.args)


def test_train_visible_is_the_train_step_with_more_visible_lesions_on_the_fly():
    """Same data, budget and seed as `train`; only the least contrast of the on-the-fly
    lesions and the run folder differ, and tune-visible tunes that run as tune tunes train's."""
    train, visible = _step_args("train"), _step_args("train-visible")
    out = visible.index("--out")
    assert visible[out + 1] == "W/organ-visible" and train[train.index("--out") + 1] == "W/organ"
    flag = visible.index("--online-min-contrast-hu")
    assert visible[flag + 1] == "20"
    rest = visible[:flag] + visible[flag + 2 : out]
    assert rest == train[: train.index("--out")]
    tune, tune_visible = _step_args("tune"), _step_args("tune-visible")
    assert tune_visible == [a.replace("W/organ/", "W/organ-visible/") for a in tune]


def test_train_more_continues_the_bundled_organs_weights_at_a_lower_rate():
    """train-more is the train step's data, crops and seed from the bundled organs weights at a
    lower peak learning rate, in its own folder (resumed there), and tune-more tunes it as tune
    tunes train's."""
    recipe = load_recipe(RECIPE)
    fresh = Values(recipe, {"work": "W"}, {})
    (planned,) = plan_command(recipe, "train-more", 0, fresh)
    more, train = list(planned.args), _step_args("train")
    assert more[more.index("--out") + 1] == "W/organ-more"
    assert more[-2:] == ["--init", "src/napari_nstseg/weights/organs.json"]  # the last --init wins
    lr = len(more) - 1 - more[::-1].index("--lr")
    assert more[lr + 1] == "5e-4" and lr > more.index("--lr")  # after the train step's 1e-3
    assert more[:lr] == train[: train.index("--out")]
    tune, tune_more = _step_args("tune"), _step_args("tune-more")
    assert tune_more == [a.replace("W/organ/", "W/organ-more/") for a in tune]
