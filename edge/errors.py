"""Exception and warning trees of the agent, named by the phase that failed."""

from __future__ import annotations


class CurbsideError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(CurbsideError, ValueError):
    """The configuration file is missing, unreadable or invalid.

    The message names the file, the key path and what was expected.
    """


class HardwareError(CurbsideError, RuntimeError):
    """A hardware backend could not be built or driven (missing driver, pin in use)."""


class StorageError(CurbsideError, OSError):
    """The outbox database could not be opened or written."""


class CurbsideWarning(UserWarning):
    """Base of warnings for degraded but working modes."""


class RunningOffline(CurbsideWarning):
    """The broker is unreachable: events are queued until it returns."""
