"""Entry point for `make run` and for Hugging Face Spaces (app_file: app.py)."""

import os

from studio.ui.app import launch

if __name__ == "__main__":
    on_spaces = bool(os.environ.get("SPACE_ID"))
    launch(host="0.0.0.0" if on_spaces else os.environ.get("STUDIO_HOST", "127.0.0.1"),
           port=int(os.environ.get("PORT", os.environ.get("STUDIO_PORT", "7860"))))
