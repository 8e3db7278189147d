"""The project's error types. A HarnessError is bad input or configuration: the CLI prints its message
(which names the file and line, or the config key, and a hint) without a traceback."""

from __future__ import annotations


class HarnessError(Exception):
    """Bad input or configuration that the user can fix."""


class ConfigError(HarnessError):
    """A config entry is unknown, missing or inconsistent."""


class DataFormatError(HarnessError):
    """A data file is missing, malformed or inconsistent; the message names the file and line."""


class CheckpointError(HarnessError):
    """A checkpoint does not match its config (missing or unexpected weights, wrong shapes)."""
