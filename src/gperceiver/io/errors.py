"""Errors and warnings about user input files."""

from __future__ import annotations


class InputError(Exception):
    """A problem with an input file: one line naming the file, the place and the fix."""

    def __init__(self, path, where: str | None, problem: str, fix: str | None = None):
        problem = " ".join(str(problem).split())  # one line, whatever a parser said
        self.path, self.where, self.problem, self.fix = str(path), where, problem, fix
        place = f"{self.path}, {where}" if where else self.path
        message = f"{place}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class InputWarning(UserWarning):
    """Input was usable but something was dropped or looks suspicious."""
