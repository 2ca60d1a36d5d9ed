"""The panel's background run: :meth:`session.Session.run_steps` in a napari thread worker, so
the GUI stays live and Cancel acts between batches."""

from __future__ import annotations

from typing import Any

from napari.qt.threading import thread_worker

from .session import RunRequest, Session


def predict_worker(session: Session, request: RunRequest) -> Any:
    """The worker (not started): yields (done, total) progress or a status line and returns the
    run's RunOutcome; nothing raises out of it."""

    @thread_worker(start_thread=False)
    def work():
        return (yield from session.run_steps(request))

    return work()
