"""Issue 28's "Done when": weights that miss a kind of lesion (trained on dark lesions only) are
fine-tuned on 15 corrected slices of one scan with bright lesions, and Dice on held-out slices
of that kind rises measurably; the benchmark's own code at a smaller budget."""

from __future__ import annotations

import pytest

from script_helpers import load_script


@pytest.mark.slow
def test_fine_tuning_on_corrected_bright_slices_finds_bright_lesions(tmp_path):
    bench = load_script("corrections_finetune", "benchmarks")
    report = bench.main(
        [
            "--work",
            str(tmp_path),
            "--base-steps",
            "250",
            "--finetune-steps",
            "80",
            "--corrected",
            "15",
        ]
    )
    before, after = report["dice_held_out"]
    assert before < 0.2 and after > before + 0.3, report
    # Other bright lesions, in a scan it never saw, are found too.
    bright_before, bright_after = report["dice_unseen_bright"]
    assert bright_after > bright_before + 0.3, report
    assert len(report["corrected_slices"]) == 15
