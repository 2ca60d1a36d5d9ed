"""`nstseg predict` over a folder or CSV list of scans: worker processes, resume, summary table."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_nstseg.inference.predict_outputs import MAP_SUFFIXES, SEG_SUFFIX, mask_suffix
from napari_nstseg.io.formats import (
    format_of,
    matching_suffix,
    strip_suffix,
    volume_file_suffixes,
)
from napari_nstseg.io.outputs import check_results_folder

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("scan", "status", "seconds", "lesions", "error", "input", "mask")
DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"


@dataclass(frozen=True)
class BatchConfig:
    """How a batch runs: worker processes, torch threads each, and the device each one gets."""

    workers: int = 1
    threads_per_worker: int | None = None  # None: torch's default (in-process runs)
    devices: tuple[str, ...] = ("auto",)  # worker i runs on devices[i % len(devices)]

    @classmethod
    def for_machine(cls, workers: int | None, device: str, pending: int) -> BatchConfig:
        """One worker per GPU when ``device`` is a CUDA device without index (or auto with
        CUDA), else ``workers`` (default 1) on ``device``; on the CPU the cores are shared out
        so that workers x threads stays within them."""
        devices: tuple[str, ...] = (device,)
        if device.strip().lower() in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                devices = tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        n = workers if workers is not None else len(devices)
        if n < 1:
            raise ValueError(f"--workers must be at least 1, got {n}")
        n = max(1, min(n, pending))  # no process for no scan
        threads = None
        if n > 1 and not devices[0].startswith("cuda"):
            threads = max(1, _cores() // n)
        return cls(workers=n, threads_per_worker=threads, devices=devices)


@dataclass(frozen=True)
class ScanJob:
    """One scan of the batch and every file its run writes."""

    name: str
    input: Path
    mask: Path
    report: Path
    maps: Path | None = None
    lesion_map: Path | None = None


@dataclass
class ScanResult:
    """One row of the summary table."""

    scan: str
    status: str
    seconds: float = 0.0
    lesions: int | None = None
    error: str = ""
    input: str = ""
    mask: str = ""
    warnings: list[str] = field(default_factory=list)


def is_batch_input(path: str | os.PathLike) -> bool:
    """A CSV list, or a folder that is not itself a DICOM series (a folder of scans or of
    series); anything else is one scan."""
    p = Path(path)
    if p.is_file():
        return p.name.lower().endswith(".csv")
    return p.is_dir() and format_of(p) is None


def find_scans(path: Path) -> list[tuple[Path, str | None]]:
    """The scans a folder or CSV list names, each with the output name the list gives (or None).

    A folder: its files with a single-file scan suffix and each sub-folder as a DICOM series
    (hidden entries and other files are passed over). A CSV: an ``input`` column of paths
    (relative ones to the CSV's folder) and optionally an ``output`` column of names.
    """
    if path.is_dir():
        scans = []
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() or scan_suffix(entry.name) is not None:
                scans.append((entry, None))
        if not scans:
            raise ValueError(
                f"{path}: no scans in this folder (files ending {', '.join(volume_file_suffixes())}"
                ", or one DICOM series per sub-folder)"
            )
        return scans
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    if "input" not in columns:
        raise ValueError(
            f"{path}: no 'input' column; its first line must name the columns, e.g. input,output"
        )
    scans = []
    for line, row in enumerate(rows, start=2):
        value = (row.get(columns["input"]) or "").strip()
        if not value:
            raise ValueError(f"{path}, line {line}: the input column is empty")
        source = Path(value).expanduser()
        out = (row.get(columns.get("output", ""), "") or "").strip() or None
        scans.append((source if source.is_absolute() else path.parent / source, out))
    if not scans:
        raise ValueError(f"{path}: the list names no scans")
    return scans


def scan_suffix(name: str) -> str | None:
    """The single-file scan suffix ending ``name`` (.nii.gz, .mha, ...), else None."""
    return matching_suffix(name, volume_file_suffixes())


def _is_dicom(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(SEG_SUFFIX)


def _scan_name(path: Path) -> str:
    if path.is_dir():
        return path.name
    if path.name.lower().endswith(SEG_SUFFIX):
        return path.parent.name  # a .dcm file stands for its whole series
    return strip_suffix(path.name)


def plan_jobs(args: argparse.Namespace, scans: list[tuple[Path, str | None]]) -> list[ScanJob]:
    """Each scan's output paths in the output folder: the mask in the scan's own format (.nii.gz
    where that is not writable), a DICOM SEG for a DICOM series, the report as NAME.json."""
    out = Path(args.out_file).expanduser().absolute()
    jobs: list[ScanJob] = []
    for source, given in scans:
        name = given or _scan_name(source)
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{name}: an output name must lie inside the output folder {out}")
        suffix = mask_suffix(Path(name))
        if given and (suffix or name.lower().endswith(SEG_SUFFIX)):
            mask_name = name
            name = strip_suffix(name) if suffix else name[: -len(SEG_SUFFIX)]
        elif _is_dicom(source):
            mask_name = name + SEG_SUFFIX
        else:
            own = mask_suffix(source)
            mask_name = name + (own or MAP_SUFFIXES[0])
        jobs.append(
            ScanJob(
                name=name,
                input=source.expanduser().absolute(),
                mask=out / mask_name,
                report=(Path(args.report).expanduser().absolute() if args.report else out)
                / f"{name}.json",
                maps=Path(args.maps).expanduser().absolute() / name if args.maps else None,
                lesion_map=(
                    Path(args.lesion_map).expanduser().absolute() / f"{name}_lesions.nii.gz"
                    if args.lesion_map
                    else None
                ),
            )
        )
    seen: dict[Path, ScanJob] = {}
    for job in jobs:
        other = seen.setdefault(job.report, job)
        if other is not job:
            raise ValueError(
                f"{other.input} and {job.input} would both be written as {job.name}; list them "
                "in a CSV with an output column giving each its own name"
            )
    return jobs


def finished(job: ScanJob) -> dict[str, Any] | None:
    """The report of a scan a run finished with every output this run asks for, else None.

    The report is moved into place last of a scan's files (io/atomic.py's AtomicBatch), so it
    exists only when the mask, maps and lesion map before it are complete.
    """
    try:
        report = json.loads(job.report.read_text(encoding="utf-8"))
        same_input = Path(report["input"]["path"]) == job.input.resolve()
        outputs = report["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same_input or not job.mask.exists():
        return None
    if job.lesion_map is not None and not job.lesion_map.exists():
        return None
    if job.maps is not None and not outputs.get("maps"):
        return None
    return report


def scan_args(args: argparse.Namespace, job: ScanJob, device: str) -> argparse.Namespace:
    """The single-scan command's arguments for one scan of the batch."""
    return argparse.Namespace(
        **{
            **vars(args),
            "ct_file": str(job.input),
            "out_file": str(job.mask),
            "report": str(job.report),
            "maps": str(job.maps) if job.maps else None,
            "lesion_map": str(job.lesion_map) if job.lesion_map else None,
            "device": device,
        }
    )


# One worker's state: its arguments, its device, the model it loaded for its first scan and
# "started", the queue telling the parent which scans it began (None when the batch runs in the
# command's own process).
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace, devices, threads: int | None, started) -> None:
    """Set up a worker process: Ctrl+C is taken between scans by the parent (which asks the
    running scans to stop), the torch thread count, the device this worker runs on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _WORKER.update(args=args, device=devices.get(), started=started, segmenter=None)


def _segmenter(args: argparse.Namespace, device: str):
    """The worker's model, loaded on its first scan and kept for the others."""
    if _WORKER.get("segmenter") is None:
        from napari_nstseg.inference.engine import Segmenter
        from napari_nstseg.inference.predict_scan import engine_config

        _WORKER["segmenter"] = Segmenter.from_checkpoint(args.weights, device, engine_config(args))
    return _WORKER["segmenter"]


def run_job(job: ScanJob) -> ScanResult:
    """Predict one scan in this worker; any error becomes the result's one-line message."""
    from napari_nstseg.inference.predict_scan import predict_one

    args, device = _WORKER["args"], _WORKER["device"]
    if _WORKER.get("started") is not None:
        _WORKER["started"].put(job.name)
    result = ScanResult(job.name, DONE, input=str(job.input), mask=str(job.mask))
    t = time.perf_counter()
    chatter = io.StringIO()
    try:
        with _interruptible(), contextlib.redirect_stdout(chatter):
            with contextlib.redirect_stderr(chatter):
                predict_one(scan_args(args, job, device), segmenter=_segmenter(args, device))
        report = finished(job) or {}
        result.lesions = len(report.get("lesions", []))
    except KeyboardInterrupt:
        if _WORKER.get("started") is None:
            raise  # in-process: the batch itself stops
        result.status = INTERRUPTED
    except Exception as exc:
        result.status, result.error = FAILED, one_line(exc)
    result.seconds = time.perf_counter() - t
    result.warnings = [ln for ln in chatter.getvalue().splitlines() if ln.startswith("warning:")]
    return result


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """In a worker, the first Ctrl+C stops the scan (its temporaries are removed on the way out)
    and later ones are ignored, so that nothing interrupts that clean-up."""
    if _WORKER.get("started") is None:
        yield  # in-process: the caller's own handling
        return

    def stop(_signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def one_line(exc: BaseException) -> str:
    """An error as the summary shows it: the message, on one line, with its type when the
    message alone would not say what went wrong."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (ValueError, OSError, RuntimeError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_batch(args: argparse.Namespace) -> int:
    """Handler of `nstseg predict FOLDER_OR_CSV OUT_DIR`; 1 when any scan failed, else 0."""
    source = Path(args.ct_file).expanduser()
    out = Path(args.out_file).expanduser().absolute()
    if getattr(args, "organ_mask", None):
        raise ValueError("--organ-mask is one scan's labels; run organ mode one scan at a time")
    if mask_suffix(out) is not None or out.name.lower().endswith(SEG_SUFFIX) or out.is_file():
        raise ValueError(
            f"{out}: for a folder or CSV list of scans, OUT_FILE is the output folder, not a file"
        )
    what = "the folder of scans" if source.is_dir() else "the list of scans"
    check_results_folder(out, [SUMMARY_NAME], {what: source})
    jobs = plan_jobs(args, find_scans(source))
    results: dict[str, ScanResult] = {}
    pending = []
    for job in jobs:
        report = finished(job)
        if report is None:
            pending.append(job)
        else:
            results[job.name] = ScanResult(
                job.name, SKIPPED, lesions=len(report.get("lesions", [])), input=str(job.input),
                mask=str(job.mask),
            )  # fmt: skip
    config = BatchConfig.for_machine(getattr(args, "workers", None), args.device, len(pending))
    print(
        f"{len(jobs)} scan(s): {len(jobs) - len(pending)} already done, {len(pending)} to run in "
        f"{config.workers} worker(s)"
        + (f" of {config.threads_per_worker} thread(s)" if config.threads_per_worker else ""),
        file=sys.stderr,
    )
    out.mkdir(parents=True, exist_ok=True)
    run = (_run_in_process if config.workers == 1 else _run_in_pool)(args, pending, config)
    try:
        for result in run:
            results[result.scan] = result
            _progress(result, len(results), len(jobs))
    except BaseException:
        run.close()  # stops the workers' scans before the summary is written
        for job in jobs:
            if job.name not in results:
                report = finished(job)  # a scan can finish as the interrupt comes
                results[job.name] = ScanResult(
                    job.name, DONE if report else INTERRUPTED, input=str(job.input),
                    lesions=len(report.get("lesions", [])) if report else None, mask=str(job.mask),
                )  # fmt: skip
        _finish(jobs, results, out)
        raise
    rows = _finish(jobs, results, out)
    return 1 if any(r.status != DONE and r.status != SKIPPED for r in rows) else 0


def _run_in_process(args, jobs: list[ScanJob], config: BatchConfig) -> Iterator[ScanResult]:
    """One worker: this process, its model loaded once."""
    _WORKER.clear()
    _WORKER.update(args=args, device=config.devices[0], started=None, segmenter=None)
    try:
        for job in jobs:
            yield run_job(job)
    finally:
        _WORKER.clear()


def _run_in_pool(args, jobs: list[ScanJob], config: BatchConfig) -> Iterator[ScanResult]:
    """``config.workers`` spawned processes (torch.multiprocessing's spawn context, so CUDA
    works in them). A worker that dies (killed, out of memory) takes the pool down with the
    scans then running in every worker; the pool is replaced, and those scans are run again
    one at a time at the end, so that only a scan that kills its worker again is failed."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    todo, suspects, retried = list(jobs), [], set()
    workers = config.workers
    while todo or suspects:
        if not todo:
            todo, suspects, workers = suspects, [], 1
            retried.update(job.name for job in todo)
        devices, started = ctx.SimpleQueue(), ctx.SimpleQueue()
        for i in range(workers):
            devices.put(config.devices[i % len(config.devices)])
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(args, devices, config.threads_per_worker, started),
        )
        futures: dict[Future, ScanJob] = {pool.submit(run_job, job): job for job in todo}
        todo, broken = [], []
        try:
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken.append(futures[future])
        except BaseException:
            # Ctrl+C (or SIGTERM) here: ask the running scans to stop, drop the rest.
            for child in multiprocessing.active_children():
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        running = set()
        while broken and not started.empty():
            running.add(started.get())
        if broken:
            print(
                "a worker process died (killed or out of memory?); the scans then running are "
                "run again, one at a time, at the end",
                file=sys.stderr,
            )
        for job in broken:
            if job.name not in running:
                todo.append(job)  # never started: no suspect
            elif job.name not in retried:
                suspects.append(job)
            else:
                yield ScanResult(
                    job.name, FAILED, input=str(job.input), mask=str(job.mask),
                    error="its worker process died running it, twice (killed or out of memory?)",
                )  # fmt: skip


def _progress(result: ScanResult, n: int, total: int) -> None:
    for warning in result.warnings:
        print(f"{result.scan}: {warning}", file=sys.stderr)
    what = {
        DONE: f"done in {result.seconds:.1f} s, {result.lesions} lesion(s)",
        FAILED: f"failed: {result.error}",
        INTERRUPTED: "interrupted",
    }.get(result.status)
    if what is not None:
        print(f"[{n}/{total}] {result.scan}: {what}", file=sys.stderr)


def _finish(jobs: list[ScanJob], results: dict[str, ScanResult], out: Path) -> list[ScanResult]:
    """Print the summary table and save it as OUT/summary.csv (atomically); the rows in the
    batch's order."""
    from napari_nstseg.io.atomic import atomic_write

    rows = [results[job.name] for job in jobs]
    table = [("scan", "status", "seconds", "lesions", "error")]
    for r in rows:
        lesions = "" if r.lesions is None else str(r.lesions)
        table.append((r.scan, r.status, f"{r.seconds:.1f}", lesions, r.error))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for *cells, error in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)), error)
    counts = {s: sum(r.status == s for r in rows) for s in (DONE, SKIPPED, FAILED, INTERRUPTED)}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"{tally}; summary: {out / SUMMARY_NAME}")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                row = asdict(r)
                row["seconds"] = f"{r.seconds:.2f}"
                row["lesions"] = "" if r.lesions is None else r.lesions
                writer.writerow(row)

    atomic_write(out / SUMMARY_NAME, write)
    return rows


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
