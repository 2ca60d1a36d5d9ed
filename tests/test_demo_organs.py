"""The demo runs in organ mode on the sample's liver by default, through predict's real parser,
and the sample's organ labels pass predict's checks (fast: no model run)."""

from __future__ import annotations

from napari_nstseg._sample_data import SAMPLE_CT, SAMPLE_ORGANS


def test_the_headless_demo_searches_the_liver_of_the_sample(tmp_path):
    from napari_nstseg.cli import build_parser
    from napari_nstseg.demo import demo_weights, headless_argv
    from napari_nstseg.inference.cli_organs import organ_labels, read_organ_mask
    from napari_nstseg.io import read_ct

    args = build_parser("predict").parse_args(headless_argv(tmp_path))
    assert args.organ_mask == str(SAMPLE_ORGANS) and args.organ_margin_mm == 10.0
    labels = organ_labels(args.organ_mask, args.organs, args.organ_margin_mm, "--organ-mask")
    assert labels == (5,)  # TotalSegmentator's liver
    organs = read_organ_mask(args.organ_mask, read_ct(SAMPLE_CT).geometry, labels)
    assert (organs == 5).sum() > 30_000
    # with the weights trained for organ mode where they are bundled
    assert args.weights == demo_weights()
    # the whole scan stays one argument away, with the default weights
    whole = build_parser("predict").parse_args(headless_argv(tmp_path, organs=None))
    assert whole.organ_mask is None and whole.organs is None and whole.weights is None


def test_the_demo_takes_the_organ_mode_weights_where_they_are_bundled(monkeypatch, tmp_path):
    from napari_nstseg import bundled
    from napari_nstseg.demo import DEMO_WEIGHTS, demo_weights

    shipped = dict(bundled.bundled_weights())
    monkeypatch.setattr(bundled, "bundled_weights", lambda: {k: v for k, v in shipped.items()
                                                             if k != DEMO_WEIGHTS})  # fmt: skip
    assert demo_weights() is None
    monkeypatch.setattr(bundled, "bundled_weights", lambda: {**shipped, DEMO_WEIGHTS: None})
    assert demo_weights() == DEMO_WEIGHTS


def test_the_demo_shows_the_sample_lesion_with_at_most_two_other_components(
    tmp_path, capsys, one_torch_thread
):
    """Issue 26's goal for a first-time user: the demo's own command line (organ mode on the
    liver with the bundled organ-mode weights at their operating point and centre rule, no
    maps here to save time) finds the sample's lesion and shows at most 2 other components.
    Measured (AMD EPYC, CPU): the lesion alone, Dice 0.72."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from napari_nstseg._sample_data import SAMPLE_MASK
    from napari_nstseg.cli import main
    from napari_nstseg.demo import headless_argv

    argv = headless_argv(tmp_path)
    cut = argv.index("--maps")
    assert main([*argv[:cut], *argv[cut + 2 :], "--device", "cpu"]) == 0
    capsys.readouterr()
    gt = np.asarray(nib.load(SAMPLE_MASK).dataobj) > 0
    mask = np.asarray(nib.load(tmp_path / "sample_ct_tumor_mask.nii.gz").dataobj) > 0
    labels, n = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    on_lesion = set(np.unique(labels[gt & mask]).tolist()) - {0}
    assert on_lesion, "the demo misses the sample's lesion"
    component = np.isin(labels, list(on_lesion))
    assert 2 * (gt & component).sum() / (gt.sum() + component.sum()) >= 0.5
    assert n - len(on_lesion) <= 2, f"{n - len(on_lesion)} other components"
