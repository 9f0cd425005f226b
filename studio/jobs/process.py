"""Who a recorded pid is: a worker or task process identified by pid, start time and boot, never by pid alone.

A pid is reused once its process ends. After a restart of the machine, container or Space, a run left
"running" in status.json names a pid that may now belong to anything (the app itself included), so
liveness and the kill on a second Stop compare the process start time and the boot id recorded at launch.
No torch import: the manager and the UI use this.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
SAME_START_SEC = 0.05  # psutil's create_time of one process is the same float on every call


def boot_id() -> str:
    """This boot's id (Linux); empty where the system has none."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> dict:
    """The status.json fields that pin `pid` to the process running now: {pid, pid_started, boot_id}."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = None
    return {"pid": pid, "pid_started": started, "boot_id": boot_id()}


def _process(status: dict) -> psutil.Process | None:
    """The live process status.json's pid names, or None when it ended or the pid now names another one."""
    pid = status.get("pid")
    if not pid or (status.get("boot_id") and status["boot_id"] != boot_id()):
        return None  # no pid yet, or recorded before a reboot: that process is gone whatever holds the pid now
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        started = status.get("pid_started")
        if started is not None and abs(proc.create_time() - float(started)) > SAME_START_SEC:
            return None  # the pid was reused by a process started later
        return proc
    except (psutil.Error, ValueError):
        return None


def alive(status: dict) -> bool:
    """Whether the process recorded in `status` (a run's or a task's status.json) still runs."""
    return _process(status) is not None


def _ours(proc: psutil.Process) -> bool:
    """A status written before start times were recorded: kill only a process that runs studio's jobs."""
    try:
        return "studio.jobs" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def kill_group(status: dict) -> bool:
    """SIGKILL the recorded process's group (the worker and, under accelerate, all its ranks). Never a
    process whose start time or boot differs from the recorded one. Returns whether a signal was sent."""
    proc = _process(status)
    if proc is None or (status.get("pid_started") is None and not _ours(proc)):
        return False
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
