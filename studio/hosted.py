"""Hosted mode: the studio as a shared web app (Hugging Face Spaces), where visitors are strangers.

On when STUDIO_HOSTED=1, and automatically inside a Space (SPACE_ID is set there). Then:
- logins come from the secret STUDIO_USERS="alice:pw1,bob:pw2" (Gradio auth). Without it the
  Space is a public demo: data, presets and chat work, training and file exports are off;
- training and file exports need a logged-in user (`require_login`);
- uploads are limited in size (STUDIO_MAX_UPLOAD, default 100mb);
- a path a user types can only reach the studio's own folders (`safe_path`): the workspace,
  STUDIO_HOME, the shipped assets and Gradio's upload folder;
- who may do what (visitor, user, admin), owners and quotas: studio/policy.py.
Locally (hosted mode off) none of this applies: the user owns the machine and its files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from studio import paths
from studio.errors import StudioError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MAX_UPLOAD = "100mb"  # the largest sample-sized dataset a visitor needs; a Space disk is shared


class AccessError(StudioError):
    """Something a hosted studio does not allow (no login, a path outside its folders)."""


def enabled() -> bool:
    """Hosted mode: STUDIO_HOSTED=1, or automatically inside a Hugging Face Space."""
    return os.environ.get("STUDIO_HOSTED", "") == "1" or bool(os.environ.get("SPACE_ID"))


def users() -> list[tuple[str, str]]:
    """(user, password) pairs from STUDIO_USERS="user:pass,user2:pass2" (a Space secret)."""
    pairs = []
    for item in os.environ.get("STUDIO_USERS", "").split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise AccessError(f"STUDIO_USERS has an entry without 'user:password' ({user or item!r}).",
                              "Set the secret to comma-separated user:password pairs, e.g. 'alice:s3cret'.")
        pairs.append((user, password))
    return pairs


def launch_options() -> dict:
    """Extra arguments for `Blocks.launch` in hosted mode (auth when users exist, an upload limit)."""
    if not enabled():
        return {}
    options: dict = {"max_file_size": os.environ.get("STUDIO_MAX_UPLOAD", DEFAULT_MAX_UPLOAD)}
    if users():
        options["auth"] = users()
        options["auth_message"] = "Log in to train and export. Ask the Space owner for an account."
    return options


def current_user() -> str | None:
    """The logged-in user of the Gradio request being handled, or None (no request, or no login)."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "username", None) or None


def require_login(action: str) -> None:
    """Refuse `action` (e.g. "training") in hosted mode unless the request comes from a logged-in user."""
    if not enabled():
        return
    if not users():
        raise AccessError(f"{action.capitalize()} is off on this hosted studio (no accounts are set up).",
                          "The Space owner can add the secret STUDIO_USERS='user:password', or duplicate the "
                          "Space with a GPU and train there.")
    if current_user() is None:
        raise AccessError(f"{action.capitalize()} needs a login on this hosted studio.",
                          "Log in with the account the Space owner gave you, then try again.")


def allowed_roots() -> list[Path]:
    """The only folders a hosted user's paths may point into."""
    uploads = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
    return [paths.workspace().resolve(), paths.home().resolve(), ASSETS.resolve(), uploads.resolve()]


def safe_path(user_path: str | os.PathLike) -> Path:
    """The resolved path, if it lies inside the studio's own folders (symlinks followed); else AccessError."""
    text = os.fspath(user_path) if user_path is not None else ""
    if not text.strip() or "\x00" in text:
        raise AccessError("The path is empty or malformed.", "Upload a file, or load a sample.")
    resolved = Path(text).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in allowed_roots()):
        return resolved
    raise AccessError(f"The path {text!r} is outside the studio's folders, so this hosted studio will not read it.",
                      "Upload the file instead, or pick one from the lists (datasets, adapters, samples).")


def checked_path(user_path: str) -> str:
    """`safe_path` in hosted mode; the path unchanged locally."""
    return str(safe_path(user_path)) if enabled() else user_path


def checked_model_ref(ref: str) -> str:
    """A model reference that is a local path must pass `safe_path` in hosted mode; hub ids pass as they are."""
    text = (ref or "").strip()
    looks_like_path = text.startswith(("/", ".", "~")) or text.endswith(".gguf") or Path(text).expanduser().exists()
    if enabled() and text and text != "bundled" and looks_like_path:
        safe_path(text)
    return ref
