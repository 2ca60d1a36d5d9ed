"""Errors and warnings a user can meet when opening a scan or saving a mask, each one sentence."""

from __future__ import annotations

import os


class CTReadError(ValueError):
    """A scan could not be opened; the message names the file, the problem and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, advice: str = "") -> None:
        self.path = os.fspath(path)
        self.problem = problem
        message = f"Cannot open {self.path}: {problem}"
        if advice:
            message += f"; {advice}"
        super().__init__(message.rstrip(".") + ".")


class MaskWriteError(OSError, ValueError):
    """A mask or map could not be saved; any file already at that path is left untouched.

    It is an OSError (the save failed) and a ValueError (bad shape or values), so callers that
    catch either family see it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, advice: str = "") -> None:
        self.path = os.fspath(path)
        self.problem = problem
        message = f"Cannot save {self.path}: {problem}"
        if advice:
            message += f"; {advice}"
        super().__init__(message.rstrip(".") + ".")

    def __str__(self) -> str:
        return str(self.args[0])


class CTReadWarning(UserWarning):
    """Something about a scan the user should know (it opened, but not quite as stored)."""
