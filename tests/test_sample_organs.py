"""File > Open Sample > sample CT also gives TotalSegmentator's organ labels of the same scan, on
its grid, so organ mode can search the liver (where the sample's lesion lies)."""

from __future__ import annotations

import numpy as np

from napari_nstseg._sample_data import SAMPLE_ORGANS_NAME


def test_sample_ct_comes_with_its_organ_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nstseg", "sample_ct")
    ct, gt = viewer.layers["sample CT"], viewer.layers["sample CT ground truth"]
    organs = viewer.layers[SAMPLE_ORGANS_NAME]
    assert type(organs).__name__ == "Labels"
    assert organs.data.shape == ct.data.shape
    np.testing.assert_allclose(organs.scale, ct.scale)
    np.testing.assert_allclose(organs.translate, ct.translate)
    labels, lesion = np.asarray(organs.data), np.asarray(gt.data) > 0
    assert {1, 2, 3, 5, 7} <= set(np.unique(labels).tolist())  # spleen, kidneys, liver, pancreas
    # The inserted lesion lies (>= 95 %) in the liver, TotalSegmentator's label 5.
    assert (labels[lesion] == 5).mean() >= 0.9
