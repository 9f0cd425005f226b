"""Errors the user sees. Every message says what went wrong *and* how to fix it."""


class StudioError(Exception):
    """Base class: `message` says what happened, `fix` says what to do about it."""

    def __init__(self, message: str, fix: str = ""):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} {('Fix: ' + fix) if fix else ''}".strip())


class ConfigError(StudioError):
    """A spec, preset or setting is invalid (unknown key, wrong type, out of range)."""


class ModelError(StudioError):
    """A model reference cannot be resolved or loaded."""


class DataError(StudioError):
    """A dataset file cannot be read, detected or prepared."""


class RunError(StudioError):
    """A training run cannot be started, stopped, resumed or found."""


class AdapterError(StudioError):
    """An adapter is missing, unsafe, or does not fit the loaded base model."""
