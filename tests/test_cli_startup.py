"""`nstseg --help` and every subcommand's parser answer without importing torch, scipy's
lesion code or nibabel's image classes: a user asking for help does not wait seconds."""

import subprocess
import sys

HEAVY = ("torch", "napari_nstseg.training.lesions.dataset", "napari_nstseg.training.loop")


def test_building_the_command_line_imports_no_heavy_module():
    code = (
        "import sys; from napari_nstseg.cli import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_lesion_api_still_loads_on_first_use():
    import napari_nstseg.training.lesions as lesions

    assert lesions.SplitConfig().fractions == (0.7, 0.15, 0.15)
    assert callable(lesions.make_lesion_dataset) and "make_lesion_dataset" in dir(lesions)
    try:
        lesions.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
