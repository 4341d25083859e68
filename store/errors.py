"""One exception hierarchy for all of llora; the CLI maps it to messages and exit codes.

Every error carries a message (what was refused and why) and, where there is
one, a hint (the command to run instead).
"""

from __future__ import annotations


class LloraError(Exception):
    """Base class of every error llora raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(LloraError):
    """Something the user asked for cannot be done; no traceback is shown."""


class UsageError(UserError):
    """The command line or an input file is malformed (exit code 2)."""

    exit_code = 2


class BadInput(UsageError):
    """An argument names something that is not what the command needs."""


class NotFound(UserError):
    """No artifact (or file) matches the reference."""


class Ambiguous(UserError):
    """A reference matches several artifacts."""

    def __init__(self, message: str, *, candidates: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.candidates = candidates


class InvalidTransition(UserError):
    """A lifecycle event is not allowed from the artifact's current state."""

    def __init__(self, message: str, *, allowed: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.allowed = allowed


class RuleViolation(UserError):
    """One of the design rules R1-R10 refuses the operation."""

    def __init__(self, rule: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{rule}: {message}", hint=hint)
        self.rule = rule


class Conflict(UserError):
    """The operation would duplicate or clash with something already in the catalog."""


class Corrupt(UserError):
    """Files on disk do not match what the catalog recorded."""


class SchemaOutOfDate(UserError):
    """The catalog was written by an older schema and needs `llora db upgrade`."""


class SchemaTooNew(UserError):
    """The catalog was written by a newer llora than this one."""
