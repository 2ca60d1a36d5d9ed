"""Fine-tune a copy of the current weights on the corrections store (issue 28, "Fine-tune on my
corrections"): corrected slices plus a replay share of the weights' own training data, Dice on
held-out corrected slices before and after, the result saved as new weights with its model card.

Runs headless (no Qt): :func:`fine_tune_steps` is a generator the widget's thread worker drives,
yielding progress with a time estimate and hearing Cancel between steps; :func:`fine_tune` runs it
to the end. The starting checkpoint is only read; the new one is written under a new name beside
the store, never into the bundled weights' folder.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_nstseg.corrections.holdout import Holdout, HoldoutConfig, split_holdout
from napari_nstseg.corrections.replay import Replay, replay_for
from napari_nstseg.corrections.store import WEIGHTS_FOLDER, stored_cases
from napari_nstseg.training.cases import Case, find_cases
from napari_nstseg.training.data import AugmentConfig, SamplingConfig


@dataclass(frozen=True)
class FineTuneConfig:
    """The fine-tuning budget and mix.

    ``steps`` optimizer steps of ``batch_size`` crops (``crop_size`` working pixels; None: the
    crop the weights were trained with, else 96); ``replay_share`` of every batch comes from
    the replay data (``replay_data``: a folder `nstseg train` reads; None: the shipped sample of
    the weights' training data where there is one). AdamW at ``lr`` with poly decay. Dice is
    pixel Dice pooled over the held-out slices at ``threshold`` (None: the weights' recommended
    one, else 0.5), on the working grid as training validates.
    """

    steps: int = 150
    batch_size: int = 8
    crop_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    replay_share: float = 0.25
    replay_data: str | None = None
    positive_fraction: float = 0.7
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    threshold: float | None = None
    device: str = "auto"
    seed: int = 0
    eval_batch_size: int = 4

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"FineTuneConfig.{name} must be a whole number >= 1, got {value!r}"
                )
        if not 0 <= self.replay_share < 1:
            raise ValueError(
                f"FineTuneConfig.replay_share must be in [0, 1), got {self.replay_share!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"FineTuneConfig.lr must be positive, got {self.lr!r}")


@dataclass
class FineTuneProgress:
    """One progress report: the stage, steps done of the stage's total, and the estimated
    seconds left for the whole fine-tuning (None until a step was timed)."""

    stage: str
    done: int
    total: int
    eta_s: float | None
    text: str


@dataclass
class FineTuneResult:
    """What a fine-tuning did: Dice on the held-out slices before and after, the new weights
    (None when cancelled) and its model card, and the data it used."""

    dice_before: float
    dice_after: float | None
    weights: Path | None
    card: Path | None
    n_slices: int
    n_scans: int
    holdout: str
    replay: str
    seconds: float
    cancelled: bool = False

    def summary(self) -> str:
        if self.cancelled:
            return "fine-tuning cancelled: no new weights were saved"
        return (
            f"held-out Dice {_fmt(self.dice_before)} -> {_fmt(self.dice_after)} "
            f"({self.n_slices} corrected slices from {self.n_scans} scan(s), "
            f"{self.seconds / 60:.1f} min)"
        )


class Cancelled(Exception):
    """Cancel was asked for between two steps."""


def fine_tune(
    store: str | Path,
    weights: str | Path,
    out_dir: str | Path | None = None,
    config: FineTuneConfig = FineTuneConfig(),
    progress: Callable[[FineTuneProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> FineTuneResult:
    """:func:`fine_tune_steps` to the end in this thread, each report passed to ``progress``."""
    steps = fine_tune_steps(store, weights, out_dir, config, cancel)
    while True:
        try:
            report = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(report)


def fine_tune_steps(
    store: str | Path,
    weights: str | Path,
    out_dir: str | Path | None = None,
    config: FineTuneConfig = FineTuneConfig(),
    cancel: threading.Event | None = None,
) -> Generator[FineTuneProgress, None, FineTuneResult]:
    """Fine-tune a copy of ``weights`` on ``store``; yields progress, returns the result.

    ``out_dir`` (default ``STORE/weights``) receives ``finetuned-<time>.json`` /
    ``.safetensors`` and ``.md`` (the model card). Raises ValueError with a readable sentence
    for a store or weights that cannot be used; Cancel between steps saves nothing.
    """
    import torch

    from napari_nstseg.inference.device import select_device
    from napari_nstseg.models.checkpoint import load_checkpoint, read_operating_point
    from napari_nstseg.preprocessing import PreprocessConfig

    cancel = cancel or threading.Event()
    started = time.perf_counter()
    store, weights = Path(store).expanduser(), Path(weights).expanduser()
    out = _out_folder(store, out_dir)
    cases, spacing = _store_cases(store)
    holdout = split_holdout(cases, spacing, config.holdout)
    model, meta = load_checkpoint(weights)
    model_config = meta.get("model_config") or {}
    if model_config.get("ssl_guidance"):
        raise ValueError(
            f"{weights.name}: fine-tuning SSL-guided weights needs their masked autoencoder in "
            f"the loop; use `nstseg train --data {store} --init {weights} --mae MAE --out DIR`."
        )
    preprocess = PreprocessConfig.from_dict(meta["preprocessing"])
    point = read_operating_point(meta, weights)
    threshold = (
        config.threshold
        if config.threshold is not None
        else (point.threshold if point is not None else 0.5)
    )
    replay = replay_for(weights, config.replay_data)
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    model = model.to(device)

    train_set, replay_set, n_replay = _training_sets(holdout, replay, preprocess, meta, config)
    eval_set = _eval_set(holdout, preprocess, config)
    n_eval_batches = math.ceil(len(eval_set) / config.eval_batch_size)
    timer = _Estimate(config.steps, n_eval_batches)

    loss_fn = _loss(meta)
    n_store = config.batch_size - n_replay
    # A measured estimate before anything changes: one forward and backward pass in eval mode
    # (BatchNorm statistics untouched), its gradients dropped; the weights stay as they are.
    t0 = time.perf_counter()
    model.eval()
    x, y = _batch(train_set, replay_set, 0, n_store, n_replay, device)
    loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    timer.probe_s = time.perf_counter() - t0
    yield FineTuneProgress("before", 0, n_eval_batches, timer.left(), holdout.describe())
    before = yield from _dice(model, eval_set, config, threshold, device, "before", timer, cancel)
    if before is None:
        return _cancelled(holdout, replay, started)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    for step in range(config.steps):
        if cancel.is_set():
            return _cancelled(holdout, replay, started)
        t0 = time.perf_counter()
        lr = config.lr * (1 - step / config.steps) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = _batch(train_set, replay_set, step, n_store, n_replay, device)
        model.train()
        loss = loss_fn(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(
                f"The loss became {value} at step {step + 1}; fine-tune with a lower learning rate."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timer.step_done(time.perf_counter() - t0)
        yield FineTuneProgress(
            "training", step + 1, config.steps, timer.left(),
            f"step {step + 1} / {config.steps}, loss {value:.3f}",
        )  # fmt: skip
    after = yield from _dice(model, eval_set, config, threshold, device, "after", timer, cancel)
    if after is None:
        return _cancelled(holdout, replay, started)
    yield FineTuneProgress("saving", 0, 1, 0.0, "saving the new weights")
    seconds = time.perf_counter() - started
    n_slices = holdout.n_train_slices + holdout.n_held_out_slices + len(holdout.unused)
    n_scans = len({c.case_id for c in holdout.train + holdout.held_out})
    record = {
        "store": str(store.resolve()),
        "data": f"{n_slices} corrected slices from {n_scans} scan(s)",
        "corrected_slices": n_slices,
        "scans": n_scans,
        "holdout": {
            "method": holdout.method,
            "description": holdout.describe(),
            "held_out": {c.case_id: list(c.slices or ()) for c in holdout.held_out},
            "trained_on": {c.case_id: list(c.slices or ()) for c in holdout.train},
        },
        "replay": {**replay.to_dict(), "share": config.replay_share if n_replay else 0.0},
        "budget": {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "replay_per_batch": n_replay,
            "crop_size": list(train_set.sampling.crop_size),
            "samples": config.steps * config.batch_size,
            "lr": config.lr,
            "device": str(device),
            "minutes": round(seconds / 60, 2),
        },
        "dice_held_out": {"before": before, "after": after, "threshold": threshold},
        "config": asdict(config),
    }
    json_path, card = _save(model, meta, weights, out, record)
    return FineTuneResult(
        before, after, json_path, card, n_slices, n_scans, holdout.describe(), replay.source,
        seconds,
    )  # fmt: skip


# -- data ---------------------------------------------------------------------------------------
def _store_cases(store: Path) -> tuple[list[Case], dict[str, float]]:
    records = {c.folder.name: c.record for c in stored_cases(store)}
    if not records:
        raise ValueError(
            f"{store}: no saved corrections; correct the tumor mask and use 'Use my corrections "
            "for training' first."
        )
    cases = [c for c in find_cases(store) if c.case_id in records]
    spacing = {
        k: float((r.get("scan") or {}).get("spacing_mm", [1.0])[0]) for k, r in records.items()
    }
    return cases, spacing


def _training_sets(
    holdout: Holdout, replay: Replay, preprocess, meta: dict, config: FineTuneConfig
):
    from napari_nstseg.training.data import SliceDataset

    crop = config.crop_size or _trained_crop(meta) or 96
    n_replay = round(config.replay_share * config.batch_size) if replay.cases else 0
    n_replay = min(n_replay, config.batch_size - 1)
    sampling = SamplingConfig(
        positive_fraction=config.positive_fraction,
        crop_size=(crop, crop),
        samples_per_epoch=config.steps * (config.batch_size - n_replay),
        label_values=(1,),
        augment=AugmentConfig(),
        seed=config.seed,
    )
    train_set = SliceDataset(holdout.train, preprocess, sampling)
    replay_set = None
    if n_replay:
        replay_sampling = replace(
            sampling, samples_per_epoch=config.steps * n_replay, label_values=None,
            positive_fraction=0.5, seed=config.seed + 1,
        )  # fmt: skip
        replay_set = SliceDataset(list(replay.cases), preprocess, replay_sampling)
    return train_set, replay_set, n_replay


def _batch(train_set, replay_set, step: int, n_store: int, n_replay: int, device):
    """Step ``step``'s crops: ``n_store`` corrected ones, then ``n_replay`` replayed ones."""
    import torch

    items = [train_set[step * n_store + i] for i in range(n_store)]
    items += [replay_set[step * n_replay + i] for i in range(n_replay)]
    x = torch.stack([it["image"] for it in items]).to(device)
    y = torch.stack([it["mask"] for it in items]).to(device)
    return x, y


def _trained_crop(meta: dict) -> int | None:
    crop = ((meta.get("provenance") or {}).get("budget") or {}).get("crop_size")
    return int(crop[0]) if crop else None


def _eval_set(holdout: Holdout, preprocess, config: FineTuneConfig):
    from napari_nstseg.training.data import SliceDataset

    sampling = SamplingConfig(crop_size=None, sequential=True, label_values=(1,), seed=config.seed)
    return SliceDataset(holdout.held_out, preprocess, sampling)


def _loss(meta: dict):
    """The deep-supervision loss the weights were trained with (their recorded loss settings)."""
    from napari_nstseg.models import DeepSupervisionLoss
    from napari_nstseg.models.losses import LossConfig

    recorded = dict(((meta.get("provenance") or {}).get("train_config") or {}).get("loss") or {})
    if recorded.get("stage_weights") is not None:
        recorded["stage_weights"] = tuple(recorded["stage_weights"])
    known = set(LossConfig.__dataclass_fields__)
    return DeepSupervisionLoss(LossConfig(**{k: v for k, v in recorded.items() if k in known}))


# -- measuring ----------------------------------------------------------------------------------
class _Estimate:
    """Seconds left: training steps at their measured mean (before the first, at one probe
    pass), the Dice passes' batches at theirs."""

    def __init__(self, steps: int, eval_batches: int) -> None:
        self.steps, self.eval_batches = steps, eval_batches
        self.step_times: list[float] = []
        self.eval_times: list[float] = []
        self.probe_s: float | None = None  # one forward and backward pass, before any step
        self.stage = "before"
        self.done = 0

    def eval_done(self, seconds: float, stage: str, done: int) -> None:
        self.eval_times.append(seconds)
        self.stage, self.done = stage, done

    def step_done(self, seconds: float) -> None:
        self.step_times.append(seconds)
        self.stage, self.done = "training", len(self.step_times)

    def left(self) -> float | None:
        per_eval = float(np.mean(self.eval_times)) if self.eval_times else None
        per_step = float(np.mean(self.step_times)) if self.step_times else self.probe_s
        if self.stage == "after":
            return (self.eval_batches - self.done) * (per_eval or 0.0)
        if per_step is None:
            return None
        steps_left = self.steps - len(self.step_times)
        evals_left = self.eval_batches * (2 if self.stage == "before" else 1)
        if self.stage == "before":
            evals_left -= self.done
        return steps_left * per_step + evals_left * (per_eval or 0.0)


def _dice(model, dataset, config, threshold, device, stage, timer, cancel):
    """Pooled pixel Dice of ``model`` on ``dataset``'s slices; None when cancelled."""
    import torch

    model.eval()
    tp = fp = fn = 0
    n = len(dataset)
    total = math.ceil(n / config.eval_batch_size)
    for b, start in enumerate(range(0, n, config.eval_batch_size)):
        if cancel.is_set():
            return None
        t0 = time.perf_counter()
        items = [dataset[i] for i in range(start, min(n, start + config.eval_batch_size))]
        x = torch.stack([it["image"] for it in items]).to(device)
        truth = torch.stack([it["mask"] for it in items]).to(device) > 0.5
        with torch.no_grad():
            pred = torch.sigmoid(model(x).final.float()) >= threshold
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
        timer.eval_done(time.perf_counter() - t0, stage, b + 1)
        yield FineTuneProgress(
            stage, b + 1, total, timer.left(), f"Dice on held-out slices, {stage} fine-tuning"
        )
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _cancelled(holdout: Holdout, replay: Replay, started: float) -> FineTuneResult:
    n_scans = len({c.case_id for c in holdout.train + holdout.held_out})
    n = holdout.n_train_slices + holdout.n_held_out_slices + len(holdout.unused)
    seconds = time.perf_counter() - started
    return FineTuneResult(
        float("nan"), None, None, None, n, n_scans, holdout.describe(), replay.source, seconds, True
    )


# -- saving -------------------------------------------------------------------------------------
def _out_folder(store: Path, out_dir: str | Path | None) -> Path:
    from napari_nstseg.bundled import WEIGHTS_DIR

    out = Path(out_dir).expanduser() if out_dir is not None else store / WEIGHTS_FOLDER
    if out.resolve() == Path(WEIGHTS_DIR).resolve():
        raise ValueError(
            f"{out} is the bundled weights' folder, which is never written; choose another "
            "folder for the fine-tuned weights."
        )
    return out


def _save(model, meta: dict, weights: Path, out: Path, record: dict) -> tuple[Path, Path]:
    from napari_nstseg.models.checkpoint import checkpoint_paths, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = out / f"finetuned-{stamp}"
    k = 1
    while any(p.exists() for p in checkpoint_paths(stem)):
        stem, k = out / f"finetuned-{stamp}-{k}", k + 1
    mae = _copy_mae(meta, weights, out)
    before, after = record["dice_held_out"]["before"], record["dice_held_out"]["after"]
    description = (
        f"{weights.stem} fine-tuned on {record['data']} (held-out Dice {_fmt(before)} -> "
        f"{_fmt(after)})"
    )
    provenance = {
        "trained_by": "napari-nstseg fine-tune on corrections",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "initialised_from": {
            "weights": str(weights.resolve()),
            "tensors_sha256": (meta.get("tensors") or {}).get("sha256"),
            "budget": (meta.get("provenance") or {}).get("budget"),
            "initialised_from": (meta.get("provenance") or {}).get("initialised_from"),
        },
        "budget": {
            "samples": record["budget"]["samples"],
            "crop_size": record["budget"]["crop_size"],
        },
        "train_config": (meta.get("provenance") or {}).get("train_config"),
        "fine_tuned": record,
    }
    save_checkpoint(
        stem,
        model.to("cpu"),
        meta["model_config"],
        meta["preprocessing"],
        provenance,
        mae=mae,
        postprocess=meta.get("postprocess"),
        description=description,
    )
    card = stem.with_suffix(".md")
    card.write_text(model_card(stem.name, weights, record, description), encoding="utf-8")
    return checkpoint_paths(stem)[1], card


def _copy_mae(meta: dict, weights: Path, out: Path) -> str | None:
    """The starting weights' masked autoencoder, copied beside the new weights (the SSL residual
    map layer needs it); None when they name none or it is missing."""
    from napari_nstseg.models.checkpoint import checkpoint_paths

    name = meta.get("mae")
    if not name:
        return None
    source = weights.resolve().parent / str(name)
    if not all(p.is_file() for p in checkpoint_paths(source)):
        return None
    for a, b in zip(checkpoint_paths(source), checkpoint_paths(out / Path(name).name), strict=True):
        if not b.exists():
            shutil.copyfile(a, b)
    return Path(name).name


def model_card(name: str, weights: Path, record: dict, description: str) -> str:
    """The new weights' model card entry (Markdown)."""
    b, d, h = record["budget"], record["dice_held_out"], record["holdout"]
    return "\n".join(
        [
            f"# {name}: model card",
            "",
            description + ".",
            "",
            f"- Started from: `{weights.resolve()}` (not changed).",
            f"- Data: {record['data']} of the corrections store `{record['store']}`.",
            f"- Held out ({h['method']}): {h['description']}.",
            f"- Replay: {record['replay']['source']}; {b['replay_per_batch']} of every "
            f"{b['batch_size']} crops.",
            f"- Budget: {b['steps']} steps x batch {b['batch_size']} ({b['samples']} crops of "
            f"{b['crop_size'][0]}x{b['crop_size'][1]}), AdamW lr {b['lr']:g} with poly decay, on "
            f"{b['device']}, {b['minutes']:.1f} min.",
            f"- Held-out Dice (pixel Dice pooled over the held-out slices, threshold "
            f"{d['threshold']:g}): before {_fmt(d['before'])}, after {_fmt(d['after'])}.",
            "",
            "Research use only; not for diagnosis.",
            "",
        ]
    )


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )
