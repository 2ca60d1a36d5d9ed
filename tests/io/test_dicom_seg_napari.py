"""DICOM SEG in napari: File > Save on a tumor mask of a DICOM series writes a SEG (AUTOMATIC
until the user paints), and opening a SEG puts it on the open series as a Labels layer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dicom_helpers import MARKER, phantom, write_series
from napari_nstseg._seg import seg_layer_data
from napari_nstseg.io import CTReadError, read_ct
from napari_nstseg.io.dicom_seg import write_dicom_seg


def algorithm_type(path) -> str:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).SegmentSequence[0].SegmentAlgorithmType


def test_save_as_seg_then_open_it_on_the_series(make_napari_viewer, tmp_path):
    from napari.layers import Labels

    from napari_nstseg.widgets.layers import MIRROR_KEY, edit_tracker

    write_series(tmp_path / "ct", phantom(), "feet_first", reverse_files=True)
    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(tmp_path / "ct"), plugin="napari-nstseg")
    mask = (ct.data == MARKER).astype(np.uint8)
    labels = viewer.add_labels(
        mask, name="ct tumor mask", scale=ct.scale, translate=ct.translate, metadata=ct.metadata
    )
    # As the dock widget leaves a mask the model wrote: its slices recorded, its edits tracked.
    labels.metadata[MIRROR_KEY] = dict.fromkeys(range(mask.shape[0]), False)
    tracker = edit_tracker(labels)
    viewer.layers.selection.active = labels

    untouched = tmp_path / "untouched.dcm"
    viewer.layers.save(str(untouched), selected=True, plugin="napari-nstseg")
    assert algorithm_type(untouched) == "AUTOMATIC"

    labels.brush_size = 1
    labels.paint((1, 2, 2), 1)  # the user corrects one voxel
    assert tracker.edited == {1}
    edited = tmp_path / "edited.dcm"
    viewer.layers.save(str(edited), selected=True, plugin="napari-nstseg")
    assert algorithm_type(edited) == "SEMIAUTOMATIC"

    (opened,) = viewer.open(str(edited), plugin="napari-nstseg")
    assert isinstance(opened, Labels) and opened.name == "edited"
    np.testing.assert_array_equal(opened.data, labels.data)
    np.testing.assert_allclose(opened.scale, ct.scale)
    np.testing.assert_allclose(opened.translate, ct.translate)


def test_a_seg_whose_series_is_not_open_says_so(tmp_path):
    write_series(tmp_path / "a", phantom(0))
    write_series(tmp_path / "b", phantom(1))
    a, b = read_ct(tmp_path / "a"), read_ct(tmp_path / "b")
    out = write_dicom_seg(tmp_path / "a.dcm", a.hu == MARKER, a.geometry, edited=False)

    open_b, open_a = (SimpleNamespace(metadata=v.layer_metadata()) for v in (b, a))
    with pytest.raises(CTReadError, match=r"a\.dcm: it is a DICOM SEG of series .*which is not"):
        seg_layer_data(out, [open_b])
    ((data, kwargs, kind),) = seg_layer_data(out, [open_b, open_a])
    assert kind == "labels" and kwargs["scale"] == a.spacing
    np.testing.assert_array_equal(data, a.hu == MARKER)


def test_the_writer_saves_into_a_chosen_folder_and_refuses_a_scan_without_series(tmp_path):
    from napari_nstseg._seg import write_seg
    from napari_nstseg.io import MaskWriteError

    write_series(tmp_path / "ct", phantom())
    ct = read_ct(tmp_path / "ct")
    folder = tmp_path / "exports"
    folder.mkdir()
    meta = {"name": "ct tumor mask", "metadata": ct.layer_metadata()}
    (written,) = write_seg(folder, ct.hu == MARKER, meta)
    assert written == str(folder / "ct tumor mask.dcm")
    assert algorithm_type(written) == "SEMIAUTOMATIC"  # no record of who made it: not claimed
    with pytest.raises(MaskWriteError, match="does not lie on a CT opened by this plugin"):
        write_seg(tmp_path / "x.dcm", ct.hu == MARKER, {"name": "x", "metadata": {}})
