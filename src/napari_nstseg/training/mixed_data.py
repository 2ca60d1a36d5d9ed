"""Training on several data sets at once (issue 25: one model for real tumours and inserted
lesions): each crop drawn from one source, in the shares the run's config gives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from torch.utils.data import Dataset

from napari_nstseg.training.data import SamplingConfig

# A stream of its own for the source choice, apart from the crops' (seed, epoch, item) draws.
_SOURCE_STREAM = 7919


class MixedDataset(Dataset):
    """Random training items of several sets (``SliceDataset`` or ``OnlineLesionDataset``):
    item ``i`` of epoch ``e`` comes from source ``s`` with probability ``shares[s]``, drawn
    from (seed, e, i) alone, and is that source's own item ``i``, so a source's crops with
    and without lesion keep its ``positive_fraction`` and every item stays reproducible.

    ``sampling`` is the first source's; setting it (as training does to fix the epoch's
    length) sets every source's ``samples_per_epoch`` too.
    """

    def __init__(self, sources: Sequence[Dataset], shares: Sequence[float]) -> None:
        if len(sources) != len(shares) or not sources:
            raise ValueError("MixedDataset needs one share per source, and a source")
        weights = np.asarray(shares, np.float64)
        if (weights <= 0).any() or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"the sources' shares must be positive and add up to 1, got {shares}")
        labels = {tuple(s.label_values) for s in sources}
        if len(labels) != 1:
            raise ValueError(f"the sources label tumour differently: {sorted(labels)}")
        self.sources = list(sources)
        self.shares = tuple(float(w) for w in weights)
        self._edges = np.cumsum(weights)[:-1]
        self.label_values = self.sources[0].label_values
        self.epoch = 0

    @property
    def sampling(self) -> SamplingConfig:
        return self.sources[0].sampling

    @sampling.setter
    def sampling(self, value: SamplingConfig) -> None:
        for s in self.sources:
            s.sampling = replace(s.sampling, samples_per_epoch=value.samples_per_epoch)
        self.sources[0].sampling = value

    @property
    def index(self) -> list:
        """Every source's slices (an epoch of 'one pass' is one pass over all of them)."""
        return [kz for s in self.sources for kz in s.index]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for s in self.sources:
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampling.samples_per_epoch or len(self.index)

    def source_of(self, i: int) -> int:
        """Which source item ``i`` of this epoch is drawn from."""
        u = np.random.default_rng([self.sampling.seed, self.epoch, i, _SOURCE_STREAM]).random()
        return int(np.searchsorted(self._edges, u, side="right"))

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        source = self.sources[self.source_of(i)]
        return source[i % len(source)]
