"""Where the studio keeps things on disk.

- STUDIO_HOME (default ~/.cache/tuning-studio): caches, e.g. the converted bundled model.
- STUDIO_WORKSPACE (default: the current folder): what the user makes, runs/, tasks/, datasets/,
  adapters/ and exports/. Nothing in here is ever overwritten silently.
"""

import os
import re
from pathlib import Path

from studio.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def home() -> Path:
    path = Path(os.environ.get("STUDIO_HOME", Path.home() / ".cache" / "tuning-studio"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace() -> Path:
    path = Path(os.environ.get("STUDIO_WORKSPACE", Path.cwd()))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(name: str) -> Path:
    path = workspace() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    return _sub("runs")


def tasks_dir() -> Path:
    """Evaluation and pruning tasks (studio.jobs.tasks): one folder each, like runs/."""
    return _sub("tasks")


def datasets_dir() -> Path:
    return _sub("datasets")


def adapters_dir() -> Path:
    return _sub("adapters")


def exports_dir() -> Path:
    return _sub("exports")


def check_name(name: str, what: str = "name") -> str:
    """A user-chosen name for a run, dataset or adapter: one safe path component."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            f"The {what} {name!r} is not allowed.",
            "Use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(no '/', no '..'), e.g. 'medical-r16'.",
        )
    return name
