"""What the README and docs/napari.md say about opening a scan from a script holds: napari's
`viewer.open` uses its own reader unless told, which cannot read CT files, and naming the
plugin works."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_nstseg._sample_data import SAMPLE_CT

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def viewer_model():
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel


def test_naming_the_plugin_opens_the_scan(viewer_model):
    viewer = viewer_model()
    (layer,) = viewer.open(str(SAMPLE_CT), plugin="napari-nstseg")
    assert layer.name == "sample_ct" and layer.data.shape == (30, 101, 122)
    assert 'viewer.open("scan.nii.gz", plugin="napari-nstseg")' in " ".join(
        README.read_text(encoding="utf-8").split()
    )


def test_without_the_plugin_napari_uses_its_own_reader_as_the_readme_says(viewer_model):
    with pytest.raises(Exception, match="Could not find a backend"):
        viewer_model().open(str(SAMPLE_CT))
