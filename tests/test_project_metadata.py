"""The package metadata builds without setuptools deprecations and names its licences (SPDX)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_has_an_spdx_licence_and_builds_without_deprecations(tmp_path):
    script = (
        "import sys\nfrom setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Deprecat" not in done.stdout + done.stderr
    info = tmp_path / done.stdout.strip().splitlines()[-1]
    metadata = (info / "METADATA").read_text(encoding="utf-8")
    assert "License-Expression: BSD-3-Clause AND Apache-2.0 AND CC-BY-3.0" in metadata
    assert (
        (info / "licenses" / "LICENSE")
        .read_text(encoding="utf-8")
        .startswith("BSD 3-Clause License")
    )
    assert (info / "licenses" / "sample_data" / "LICENSE-TotalSegmentator").is_file()
    assert (info / "licenses" / "sample_data" / "sarcoma" / "LICENSE-STS.md").is_file()
