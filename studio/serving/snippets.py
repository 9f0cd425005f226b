"""Copyable client code for one model of the API (the Chat tab shows it for the selected adapter)."""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_LABEL = "(base)"  # the Chat tab's name for "no adapter" (as studio.inference.BASE_LABEL)


def model_id(ref: str) -> str:
    """The API's id for a base model: a local folder's name, else the reference itself ("bundled", a hub id)."""
    ref = str(ref or "bundled").strip()
    return Path(ref).name if Path(ref).exists() else ref


def api_snippet(adapter: str | None, ref: str, base_url: str = "http://127.0.0.1:7860/v1") -> str:
    """Markdown with a curl command and a Python (openai client) call for `adapter` (None or "(base)": the base)."""
    model = model_id(ref) if not adapter or adapter == BASE_LABEL else adapter
    keyed = bool(os.environ.get("STUDIO_API_KEYS"))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 128})
    auth = ' \\\n  -H "Authorization: Bearer $STUDIO_API_KEY"' if keyed else ""
    key = 'os.environ["STUDIO_API_KEY"]' if keyed else '"none"'
    # a comment of its own line: after `api_key=...` it would swallow the closing parenthesis
    note = "" if keyed else "# any key works until the server sets STUDIO_API_KEYS\n"
    curl = f"curl {base_url}/chat/completions \\\n  -H \"Content-Type: application/json\"{auth} \\\n  -d '{body}'"
    python = (f"import os\nfrom openai import OpenAI\n\n{note}client = OpenAI(base_url=\"{base_url}\", api_key={key})\n"
              f"reply = client.chat.completions.create(\n    model=\"{model}\",\n"
              f"    messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}],\n    max_tokens=128,\n)\n"
              f"print(reply.choices[0].message.content)")
    return (f"Call **{model}** from your own code (this app serves an OpenAI-compatible API at `{base_url}`; "
            f"`python -m studio serve` serves the same alone). See docs/serving.md.\n\n"
            f"```bash\n{curl}\n```\n\n```python\n{python}\n```")
