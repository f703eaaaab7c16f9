"""Errors a user can act on. Each carries a one-line message; CLIs print it and exit 2."""

from __future__ import annotations


class ParaDecomError(Exception):
    """Base of every error ParaDecom raises on purpose."""


class ProjectFileError(ParaDecomError):
    """A project file or definition is unreadable or invalid: the message names file, field, problem."""


class ConfigError(ParaDecomError):
    """A flag, variable or endpoint setting is missing or invalid."""


class LeaderError(ParaDecomError):
    """A call to the leader did not succeed."""


class LeaderUnavailableError(LeaderError):
    """The leader could not be reached (down, restarting, wrong address): trying later may help."""


class LeaderRefusedError(LeaderError):
    """The leader answered with an error (unknown project, invalid request): retrying won't help."""


class DecompositionError(ParaDecomError):
    """The LLM could not produce a valid decomposition of a task."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
