"""Who may do what on a hosted studio: one table of actions, the roles, owners and quotas.

Every action has a class:
- read: look at things (inspect a file, estimate memory, watch a run, the lists);
- chat: generate with the base or an adapter the caller may see (rate-limited, answers capped);
- write: save something new (a prepared dataset, an imported adapter, a preset);
- destructive: delete, overwrite, stop or kill something;
- compute: train, evaluate, prune, merge, export, download a model.

Roles (`actor()`):
- local: hosted mode off (the user owns the machine): everything is allowed, as always;
- system: hosted, but no request is being served (the app's own start-up, the queue, a worker);
- visitor: hosted with no STUDIO_USERS (a public demo): read and chat only;
- user: logged in (STUDIO_USERS) or an API key named for a user: acts on their own things;
- admin: a user listed in STUDIO_ADMINS: acts on everything.

Ownership lives on disk: a folder a user creates on a hosted studio (a run, a dataset, an imported
adapter, a task) gets an OWNER_FILE {"owner": ..., "published": ...}. A folder without one was put
there by the owner of the studio (or made locally): it is published, everyone sees and uses it, and
only an admin may change it. A user sees published things and their own; nobody else's.

Every UI endpoint is checked by `check(action)` before it runs (studio/ui/guard.py wraps them all);
an endpoint missing from ACTIONS is refused on a hosted studio (fail closed). The studio modules
ask `require_visible` / `require_owner` / `stamp` again where they touch folders, so a handler that
forgot something still cannot reach another user's files.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from studio.hosted import AccessError  # one error class for everything a hosted studio refuses
from studio.util import read_json, write_json_atomic

READ, CHAT, WRITE, DESTRUCTIVE, COMPUTE = "read", "chat", "write", "destructive", "compute"
OWNER_FILE = ".owner.json"

# action (a UI endpoint's api_name without Gradio's _1, _2 suffix) -> (class, what it does, in words)
ACTIONS: dict[str, tuple[str, str]] = {
    # the current state and the lists shown on every tab: read only
    "setter": (READ, "choosing what to work on"), "summary_html": (READ, "showing the current state"),
    "reread": (READ, "reading the lists"), "follow_current": (READ, "showing the current state"),
    "lambda": (READ, "updating the page"),  # UI glue only (copy a value, show a box); never acts on disk
    "_template_line": (READ, "showing the chat template"), "_latest_run": (READ, "showing the latest run"),
    "load_example": (READ, "loading an example"), "follow_model": (READ, "showing the model"),
    # Data tab: inspecting reads a file (uploads are limited by STUDIO_MAX_UPLOAD); saving writes
    "upload_data": (READ, "inspecting an upload"), "inspect_data": (READ, "inspecting data"),
    "inspect_on_format": (READ, "inspecting data"), "inspect_medical": (READ, "inspecting a sample"),
    "inspect_hinglish": (READ, "inspecting a sample"), "load_medical_sample": (READ, "loading a sample"),
    "load_hinglish_sample": (READ, "loading a sample"), "preview_row": (READ, "previewing a row"),
    "load_preference_sample": (READ, "loading a sample"), "inspect_preference_sample": (READ, "inspecting a sample"),
    "inspect_preference": (READ, "inspecting preference pairs"), "preview_pair": (READ, "previewing a pair"),
    "prepare_data": (WRITE, "saving datasets"), "prepare_preference": (WRITE, "saving datasets"),
    # Presets tab
    "estimate": (READ, "estimating memory"), "load_preset": (READ, "loading a preset"),
    "edited": (READ, "editing settings"), "hardware_choice": (READ, "choosing hardware"),
    "recommend_preset": (READ, "recommending a preset"), "what_runs": (READ, "showing what a CPU run decides"),
    "save_preset": (WRITE, "saving presets"),
    # Train tab
    "what_will_train": (READ, "showing the run's settings"), "run_status": (READ, "watching a run"),
    "poll": (READ, "watching a run"), "controls": (READ, "showing a run's buttons"),
    "preference_status": (READ, "showing the method"), "method_fields": (READ, "showing the method's fields"),
    "grpo_status": (READ, "watching a GRPO run"), "grpo_shown": (READ, "showing the method"),
    "preview_rewards": (COMPUTE, "sampling answers to preview rewards"),
    "evaluate_rewards": (COMPUTE, "evaluating held-out rewards"), "fresh_run_name": (READ, "suggesting a run name"),
    "effective_settings": (READ, "showing the run's settings"),
    "start_training": (COMPUTE, "training"), "resume_training": (COMPUTE, "training"),
    "stop_training": (DESTRUCTIVE, "stopping runs"), "delete": (DESTRUCTIVE, "deleting runs"),
    # Experiments tab: comparing, sweeps, checkpoints (issue 28)
    "experiment_lists": (READ, "listing runs and sweeps"), "compare_runs": (READ, "comparing runs"),
    "sweep_ranking": (READ, "watching a sweep"), "compare_sweep": (READ, "comparing runs"),
    "run_checkpoints": (READ, "listing checkpoints"), "run_report": (READ, "writing a run report"),
    "stop_sweep": (DESTRUCTIVE, "stopping runs"), "branch_run": (COMPUTE, "training"),
    "checkpoint_adapter": (WRITE, "saving adapters"),
    # Chat tab
    "load_model": (CHAT, "loading the model"), "generate": (CHAT, "chatting"), "chat": (CHAT, "chatting"),
    "compare": (CHAT, "chatting"), "load_adapters": (CHAT, "loading adapters"),
    "run_mode": (READ, "switching the chat mode"), "retry_mode": (READ, "switching the chat mode"),
    "show_mode": (READ, "switching the chat mode"), "clear_chat": (READ, "clearing the chat"),
    "code_snippet": (READ, "showing API code"), "refresh_adapters": (READ, "listing adapters"),
    "import_adapter": (WRITE, "importing adapters"), "delete_adapter": (DESTRUCTIVE, "deleting adapters"),
    "export_adapter": (COMPUTE, "exporting files"),
    # Evaluate tab: each runs as a task process
    "eval_perplexity": (COMPUTE, "evaluating"), "eval_battery": (COMPUTE, "evaluating"),
    "prune": (COMPUTE, "pruning"), "prune_sweep": (COMPUTE, "pruning"), "eval_task": (READ, "watching a task"),
    "eval_stop": (DESTRUCTIVE, "stopping tasks"), "_focus": (READ, "choosing the adapter in focus"),
    # Arena tab (issue 27): playing generates (chat) into your own arena, voting writes to it
    "arena_draw": (READ, "drawing a prompt"), "arena_ask": (CHAT, "asking the arena's models"),
    "arena_vote": (WRITE, "voting in arenas"), "arena_leaderboard": (READ, "showing the arena leaderboard"),
    "arena_open": (READ, "showing the arena leaderboard"), "arena_follow": (READ, "listing the arena's models"),
    "arena_datasets": (READ, "listing the arena's datasets"),
    "arena_judge": (COMPUTE, "judging answers"),
    "lm_eval": (COMPUTE, "evaluating"), "merge_adapters": (COMPUTE, "merging adapters"),  # issue 27
    # Export tab
    "merge": (COMPUTE, "exporting files"), "zip_adapter": (COMPUTE, "exporting files"),
    "push_to_hub": (COMPUTE, "exporting files"), "lora_gguf": (COMPUTE, "exporting files"),
}


class RateLimited(AccessError):
    """Too many requests in the last minute (HTTP 429 on the API)."""


# ---------------------------------------------------------------- settings (each a quota with a safe default)


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise AccessError(f"{name}={os.environ.get(name)!r} is not a whole number.",
                          f"Set {name} to a number such as {default}, or unset it for the default.") from None


def requests_per_minute() -> int:
    """STUDIO_RATE_LIMIT: chat and API requests per minute per visitor, user or key (default 20)."""
    return _int_env("STUDIO_RATE_LIMIT", 20)


def max_tokens() -> int:
    """STUDIO_MAX_TOKENS: the longest answer a hosted studio generates, in tokens (default 512)."""
    return _int_env("STUDIO_MAX_TOKENS", 512)


def max_runs() -> int:
    """STUDIO_MAX_RUNS: runs queued or running at once per user (default 2; admins are not limited)."""
    return _int_env("STUDIO_MAX_RUNS", 2)


def disk_per_user() -> int:
    """STUDIO_USER_DISK: bytes a user's runs, datasets, adapters, tasks and exports may take (default 2gb)."""
    text = os.environ.get("STUDIO_USER_DISK", "2gb").strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?", text)
    if not match:
        raise AccessError(f"STUDIO_USER_DISK={text!r} is not a size.", "Use e.g. '500mb' or '2gb'.")
    scale = {"b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}[match.group(2) or "b"]
    return int(float(match.group(1)) * scale)


def allowed_models() -> list[str]:
    """STUDIO_ALLOWED_MODELS: hub ids a hosted studio may download (comma-separated; default none)."""
    return [m.strip() for m in os.environ.get("STUDIO_ALLOWED_MODELS", "").split(",") if m.strip()]


def admins() -> set[str]:
    """STUDIO_ADMINS: users (from STUDIO_USERS or API key names) who may act on everything."""
    return {a.strip() for a in os.environ.get("STUDIO_ADMINS", "").split(",") if a.strip()}


# ---------------------------------------------------------------- who is asking


@dataclass(frozen=True)
class Actor:
    role: str  # local, system, visitor, user, admin
    user: str | None = None  # the account name (user, admin)
    client: str = ""  # who to count requests for: the user, the key's name, or the visitor's address


_api_caller: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("studio_api_caller", default=None)


def hosted() -> bool:
    from studio.hosted import enabled

    return enabled()


def for_user(user: str | None, client: str = "") -> Actor:
    """The actor for an account name (None: an anonymous visitor)."""
    if not user:
        return Actor("visitor", None, client or "anonymous")
    return Actor("admin" if user in admins() else "user", user, f"user:{user}")


def set_api_caller(actor: Actor):
    """Make `actor` the caller of the API request being handled (studio.serving.api after its key check)."""
    return _api_caller.set(actor)


@contextlib.contextmanager
def acting_as(who: Actor):
    """Run a block as `who` (the app builds its first page as a visitor: only published names in it)."""
    token = _api_caller.set(who)
    try:
        yield who
    finally:
        _api_caller.reset(token)


def banner() -> str:
    """One line for the top of a hosted page saying what this studio allows ('' locally)."""
    from studio.hosted import users

    if not hosted():
        return ""
    if not users():
        return ("**Public demo:** look around, inspect data, estimate memory and chat with the owner's adapters. "
                "Saving, importing, deleting, training, pruning and exporting are off here (the owner can add "
                "accounts; see docs/spaces.md).")
    return ("**Hosted studio:** you see the owner's published adapters and datasets and your own runs, datasets and "
            f"adapters; at most {max_runs()} runs at once and {requests_per_minute()} chat requests a minute.")


def actor() -> Actor:
    """Who is asking: the API caller, else the Gradio request's login, else the studio itself."""
    if not hosted():
        return Actor("local")
    api = _api_caller.get()
    if api is not None:
        return api
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    if request is None:
        return Actor("system")
    return for_user(getattr(request, "username", None) or None, f"visitor:{_address(request)}")


def _address(request) -> str:
    """The visitor's address: behind a proxy (Spaces) the last X-Forwarded-For entry, the one the proxy saw."""
    headers = getattr(request, "headers", None) or {}
    forwarded = [a.strip() for a in str(headers.get("x-forwarded-for", "")).split(",") if a.strip()]
    if forwarded:
        return forwarded[-1]
    return getattr(getattr(request, "client", None), "host", "") or getattr(request, "session_hash", "") or ""


def _unlimited(who: Actor) -> bool:
    return who.role in ("local", "system", "admin")


# ---------------------------------------------------------------- the check every endpoint passes


def action_key(api_name: str | None) -> str:
    """'edited_12' -> 'edited': Gradio numbers repeated names; the table has one row per name."""
    return re.sub(r"_\d+$", "", api_name or "")


def check(action: str) -> str:
    """Refuse `action` for the current caller (AccessError, with how to get it allowed); returns its class."""
    who = actor()
    key = action_key(action)
    kind, label = ACTIONS.get(key, (None, key))
    if who.role in ("local", "system"):
        return kind or COMPUTE
    if kind is None:
        raise AccessError(f"'{action}' is not in this studio's permission table, so a hosted studio refuses it.",
                          "Add it to ACTIONS in studio/policy.py with its class (read, chat, write, destructive, "
                          "compute).")
    if who.role == "visitor" and kind not in (READ, CHAT):
        raise AccessError(f"{label.capitalize()} is off on this hosted studio: it is a public demo without "
                          "accounts, where visitors look around and chat with the owner's adapters.",
                          "The Space owner can add the secret STUDIO_USERS='user:password' (then log in), or "
                          "duplicate the Space and run your own copy.")
    if kind == CHAT:
        rate_limit(who)
    if kind in (WRITE, COMPUTE) and not _unlimited(who):
        check_disk(who)
    return kind


# ---------------------------------------------------------------- rate limits


_windows: dict[str, collections.deque] = {}
_windows_lock = threading.Lock()


def rate_limit(who: Actor | None = None, window_s: float = 60.0) -> None:
    """At most `requests_per_minute()` chat/API requests per caller per minute; RateLimited beyond. A hosted
    studio only, or one whose owner set STUDIO_RATE_LIMIT: locally, with or without API keys, nothing changes."""
    who = who or actor()
    if _unlimited(who) or not (hosted() or os.environ.get("STUDIO_RATE_LIMIT")):
        return
    limit, now = requests_per_minute(), time.monotonic()
    with _windows_lock:
        seen = _windows.setdefault(who.client, collections.deque())
        while seen and now - seen[0] > window_s:
            seen.popleft()
        if len(seen) >= limit:
            wait = int(window_s - (now - seen[0])) + 1
            raise RateLimited(f"Too many requests: this studio answers {limit} per minute per visitor or key.",
                              f"Wait {wait} s and try again (the owner sets STUDIO_RATE_LIMIT).")
        seen.append(now)


def cap_tokens(requested: int) -> int:
    """The answer length a hosted studio allows: `requested`, at most STUDIO_MAX_TOKENS."""
    if not hosted() or _unlimited(actor()):
        return requested
    return min(int(requested), max_tokens())


# ---------------------------------------------------------------- owners on disk


def _owner_folder(folder: Path) -> Path:
    """A run's adapter belongs to its run: runs/<id>/adapter -> runs/<id>."""
    folder = Path(folder)
    return folder.parent if folder.name == "adapter" and (folder.parent / "spec.yaml").is_file() else folder


def owner_of(folder: Path) -> dict:
    """{"owner": name or None, "published": bool}; a folder without a mark is the studio owner's, published."""
    mark = read_json(_owner_folder(folder) / OWNER_FILE, default=None)
    if not isinstance(mark, dict) or not mark.get("owner"):
        return {"owner": None, "published": True}
    return {"owner": str(mark["owner"]), "published": bool(mark.get("published"))}


def stamp(folder: Path) -> None:
    """Mark a folder just made on a hosted studio with its maker (an admin's things are published)."""
    who = actor()
    if who.user is None:
        return
    write_json_atomic(Path(folder) / OWNER_FILE, {"owner": who.user, "published": who.role == "admin",
                                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def can_see(folder: Path, who: Actor | None = None) -> bool:
    who = who or actor()
    if who.role in ("local", "system", "admin"):
        return True
    mark = owner_of(folder)
    return mark["published"] or (who.user is not None and mark["owner"] == who.user)


def may_change(folder: Path, who: Actor | None = None) -> bool:
    who = who or actor()
    if who.role in ("local", "system", "admin"):
        return True
    return who.user is not None and owner_of(folder)["owner"] == who.user


def require_owner(folder: Path, doing: str, what: str) -> None:
    """Refuse `doing` ("delete", "stop", "overwrite") on `what` unless the caller owns it (or is an admin)."""
    if may_change(folder):
        return
    mark = owner_of(folder)
    whose = "the studio owner's (shared read-only)" if mark["owner"] is None else "another user's"
    raise AccessError(f"You cannot {doing} {what}: it is {whose}.",
                      "Work on your own copy instead (e.g. import or train your own); an admin (STUDIO_ADMINS) "
                      "can change anything.")


def refuse_overwrite(what: str) -> None:
    """Hosted: exports are shared by name, so only an admin overwrites one."""
    who = actor()
    if who.role in ("local", "system", "admin"):
        return
    raise AccessError(f"Overwriting {what} is off on this hosted studio (exports are shared by name).",
                      "Choose a new name and leave Overwrite off; an admin (STUDIO_ADMINS) can overwrite.")


# ---------------------------------------------------------------- quotas on disk


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def usage(user: str) -> int:
    """Bytes the user's runs, datasets, adapters, tasks and exports take."""
    from studio import paths

    total = 0
    for parent in (paths.runs_dir(), paths.datasets_dir(), paths.adapters_dir(), paths.tasks_dir()):
        total += sum(_size(f) for f in parent.iterdir() if f.is_dir() and owner_of(f)["owner"] == user)
    mine = paths.workspace() / "exports" / user
    return total + (_size(mine) if mine.is_dir() else 0)


def check_disk(who: Actor) -> None:
    if who.user is None:
        return
    used, limit = usage(who.user), disk_per_user()
    if used >= limit:
        raise AccessError(f"Your things take {used / 2**20:.0f} MB, at the limit of {limit / 2**20:.0f} MB "
                          "per user on this studio; nothing new was written.",
                          "Delete runs, datasets or adapters you no longer need (the owner sets STUDIO_USER_DISK).")


def check_run_quota(active_owners: list[str | None]) -> None:
    """Refuse one more run when the caller already has STUDIO_MAX_RUNS queued or running."""
    who = actor()
    if _unlimited(who) or who.user is None:
        return
    mine = sum(1 for owner in active_owners if owner == who.user)
    if mine >= max_runs():
        raise AccessError(f"You already have {mine} runs queued or running; this studio allows {max_runs()} "
                          "per user.", "Wait for one to finish, or stop one (the owner sets STUDIO_MAX_RUNS).")


def check_download(repo_id: str, default: str = "") -> None:
    """A hosted studio downloads only the hub ids in STUDIO_ALLOWED_MODELS and `default` (the studio's default
    model, passed in by studio.models so that this module does not import it)."""
    if not hosted() or actor().role in ("local", "admin"):
        return
    if repo_id in (default, *allowed_models()):
        return
    raise AccessError(f"This hosted studio does not download models it was not told to ({repo_id}).",
                      "Use the default model, or ask the owner to add the id to STUDIO_ALLOWED_MODELS.")


def require_name(name: str, what: str = "adapter") -> None:
    """Hosted: an adapter, dataset or run is referenced by its registry name, never by a folder path."""
    if hosted() and actor().role not in ("local", "system") and (
            "/" in str(name) or "\\" in str(name) or str(name).startswith((".", "~"))):
        raise AccessError(f"This hosted studio takes {what}s by name, not by path ({str(name)[:60]!r}).",
                          f"Pick the {what} from the list.")
