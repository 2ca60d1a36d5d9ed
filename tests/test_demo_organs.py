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
