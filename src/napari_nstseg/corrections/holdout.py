"""Which corrected slices fine-tuning holds out to measure itself: whole scans when the store has
two or more, else groups of slices far apart in one scan (adjacent slices show the same lesion,
so a held-out slice next to a trained one would measure memory, not learning)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from napari_nstseg.training.cases import Case

BY_SCAN, BY_SLICE_GROUPS = "by scan", "by slice groups"


@dataclass(frozen=True)
class HoldoutConfig:
    """``fraction``: share of scans (2+ scans) or of corrected slices (one scan) held out, at
    least one of each side. ``guard_mm``: slices closer than this along z belong to one group
    (one scan), and a training slice closer than this to a held-out one is left out."""

    fraction: float = 0.3
    guard_mm: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"HoldoutConfig.fraction must be in (0, 1), got {self.fraction!r}")
        if self.guard_mm < 0:
            raise ValueError(f"HoldoutConfig.guard_mm must be >= 0, got {self.guard_mm!r}")


@dataclass
class Holdout:
    """Cases to train on and to measure on, each restricted to its slices (``Case.slices``)."""

    method: str
    train: list[Case]
    held_out: list[Case]
    unused: list[tuple[str, int]] = field(default_factory=list)  # (case, z) left out as guard

    @property
    def n_train_slices(self) -> int:
        return sum(len(c.slices or ()) for c in self.train)

    @property
    def n_held_out_slices(self) -> int:
        return sum(len(c.slices or ()) for c in self.held_out)

    def describe(self) -> str:
        held = ", ".join(f"{c.case_id} {_runs(c.slices or ())}" for c in self.held_out)
        text = (
            f"held out {BY_SCAN if self.method == BY_SCAN else BY_SLICE_GROUPS}: "
            f"{self.n_held_out_slices} slice(s) ({held}); {self.n_train_slices} to train on"
        )
        if self.unused:
            text += f"; {len(self.unused)} left out as a {len(self.unused)}-slice guard"
        return text


def split_holdout(
    cases: Sequence[Case], z_spacing_mm: dict[str, float], config: HoldoutConfig = HoldoutConfig()
) -> Holdout:
    """Hold out whole scans (2+ scans) or far-apart slice groups of the one scan; every case
    must list its labelled slices (``Case.slices``, as the corrections store records them)."""
    cases = [c for c in cases if c.slices]
    if not cases:
        raise ValueError("The corrections store holds no corrected slice yet.")
    if len(cases) >= 2:
        order = np.random.default_rng(config.seed).permutation(len(cases))
        n_held = min(len(cases) - 1, max(1, round(config.fraction * len(cases))))
        held = sorted((cases[i] for i in order[:n_held]), key=lambda c: c.case_id)
        train = sorted((cases[i] for i in order[n_held:]), key=lambda c: c.case_id)
        return Holdout(BY_SCAN, train, held)
    case = cases[0]
    dz = float(z_spacing_mm.get(case.case_id, 1.0))
    zs = sorted(case.slices)
    if len(zs) < 3:
        raise ValueError(
            f"{case.case_id}: {len(zs)} corrected slice(s) are too few to hold some out and "
            "train on the rest; correct at least 3 slices (better 10 or more, on several lesions)."
        )
    groups = _groups(zs, dz, config.guard_mm)
    target = max(1, math.ceil(config.fraction * len(zs)))
    if len(groups) >= 2:
        order = np.random.default_rng(config.seed).permutation(len(groups))
        held_z: list[int] = []
        for i in order[:-1]:  # the last group always trains
            if len(held_z) >= target:
                break
            held_z += groups[i]
    else:  # one run of slices: its top end is held out, a guard away from the rest
        held_z = zs[-target:]
    held_set = set(held_z)
    train_z, unused = [], []
    for z in zs:
        if z in held_set:
            continue
        if any(abs(z - h) * dz < config.guard_mm for h in held_set):
            unused.append((case.case_id, z))
        else:
            train_z.append(z)
    if not train_z:
        raise ValueError(
            f"{case.case_id}: the corrected slices lie too close together ({_runs(zs)}) to hold "
            f"some out {config.guard_mm:g} mm away from the rest; correct slices of more lesions."
        )
    return Holdout(
        BY_SLICE_GROUPS,
        [replace(case, slices=tuple(train_z))],
        [replace(case, slices=tuple(sorted(held_set)))],
        unused,
    )


def _groups(zs: list[int], dz: float, guard_mm: float) -> list[list[int]]:
    """Sorted slices cut where two neighbours lie ``guard_mm`` or more apart."""
    groups = [[zs[0]]]
    for a, b in zip(zs, zs[1:], strict=False):
        if (b - a) * dz >= guard_mm:
            groups.append([])
        groups[-1].append(b)
    return groups


def _runs(zs) -> str:
    """[1, 2, 3, 7] -> 'z 1-3, 7'."""
    runs: list[list[int]] = []
    for z in sorted(zs):
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return "z " + ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
