"""The panel's background work: :meth:`session.Session.run_steps` (a model run),
:meth:`learning.FineTuneJob.steps` (fine-tuning on corrections) and :meth:`learning.KeepJob.run`
(keeping them) in napari thread workers, so the GUI stays live and Cancel acts between batches
or steps."""

from __future__ import annotations

from typing import Any

from napari.qt.threading import thread_worker

from .learning import FineTuneJob, KeepJob
from .session import RunRequest, Session


def predict_worker(session: Session, request: RunRequest) -> Any:
    """The worker (not started): yields (done, total) progress or a status line and returns the
    run's RunOutcome; nothing raises out of it."""

    @thread_worker(start_thread=False)
    def work():
        return (yield from session.run_steps(request))

    return work()


def finetune_worker(job: FineTuneJob) -> Any:
    """The worker (not started): yields FineTuneProgress and returns a FineTuneOutcome; nothing
    raises out of it."""

    @thread_worker(start_thread=False)
    def work():
        return (yield from job.steps())

    return work()


def keep_worker(job: KeepJob) -> Any:
    """The worker (not started) that saves corrections; returns what KeepJob.run does."""

    @thread_worker(start_thread=False)
    def work():
        return job.run()

    return work()
