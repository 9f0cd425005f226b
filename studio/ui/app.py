"""Build the Gradio app: a header with the hardware, then one tab per step of the workflow."""

from __future__ import annotations

import os

import gradio as gr

from studio import policy
from studio.ui.guard import guard
from studio.ui.shared import Current, Shared, first_current
from studio.ui.tabs import arena as arena_tab
from studio.ui.tabs import chat as chat_tab
from studio.ui.tabs import data as data_tab
from studio.ui.tabs import evaluate as evaluate_tab
from studio.ui.tabs import experiments as experiments_tab
from studio.ui.tabs import export as export_tab
from studio.ui.tabs import model as model_tab
from studio.ui.tabs import presets as presets_tab
from studio.ui.tabs import train as train_tab

# In workflow order: later tabs read components that earlier tabs made.
TABS = (model_tab, data_tab, presets_tab, train_tab, experiments_tab, chat_tab, evaluate_tab, arena_tab,
        export_tab)


def hosted_mode() -> bool:
    """Hosted (HF Spaces) mode: on when STUDIO_HOSTED=1, or automatically inside a Space."""
    return os.environ.get("STUDIO_HOSTED", "") == "1" or bool(os.environ.get("SPACE_ID"))


def header() -> str:
    from studio.models import hardware

    notice = policy.banner()  # hosted: what this studio allows, and why the rest is off
    return f"# Tuning Studio\n**Hardware:** {hardware().summary()}" + (f"\n\n{notice}" if notice else "")


REFRESH_SEC = 3.0  # how often a page re-reads datasets, runs and adapters from disk (a run finishing elsewhere)


def build_app() -> gr.Blocks:
    """The app; hosted, its first page is built as a visitor sees it (no user's private names in it)."""
    if not policy.hosted():
        return _build()
    with policy.acting_as(policy.for_user(None, "first-page")):
        return _build()


def _build() -> gr.Blocks:
    shared = Shared(hosted=hosted_mode())
    with gr.Blocks(title="Tuning Studio") as demo:
        gr.Markdown(header(), elem_id="header")
        shared.current = gr.State(first_current())  # also notices dead workers and starts the queue on app start
        summary = gr.HTML(shared.current.value.summary_html(), elem_id="current")
        for tab in TABS:
            with gr.Tab(tab.TITLE, id=tab.__name__.rsplit(".", 1)[-1]):
                tab.build(shared)
        wire_current(demo, shared, summary)
        for function, outputs in shared.on_page_load:  # lists made on disk since the app started
            demo.load(function, None, outputs)
    guard(demo)  # every function asks studio.policy first (hosted mode: who may do what)
    return demo


def reread(current: Current):
    """The current state with the lists read from disk again; gr.skip() when nothing changed."""
    fresh = current.with_disk()
    return gr.skip() if fresh == current else fresh


def wire_current(demo: gr.Blocks, shared: Shared, summary: gr.HTML) -> None:
    """Every change of the current state updates the summary line and every tab that follows it; a page
    load and a timer re-read the disk (so a run finishing, or a dataset saved elsewhere, shows up)."""
    followers = [(Current.summary_html, [summary], []), *shared.followers]
    for function, outputs, inputs in followers:
        shared.current.change(function, [shared.current, *inputs], outputs, show_progress="hidden")
    loaded = demo.load(lambda c: c.with_disk(), shared.current, shared.current, show_progress="hidden")
    for function, outputs, inputs in followers:  # also when nothing changed: components were built at app start
        loaded.then(function, [shared.current, *inputs], outputs, show_progress="hidden")
    gr.Timer(REFRESH_SEC).tick(reread, shared.current, shared.current, show_progress="hidden")


def resolve_lazy_imports() -> None:
    """transformers 5 resolves its names on first use; two request threads doing that at once can fail with
    "cannot import name 'AutoTokenizer' from 'transformers'", so the app resolves them once, before serving."""
    import transformers

    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "BitsAndBytesConfig",
                 "TextIteratorStreamer", "DynamicCache", "Trainer", "TrainerCallback"):
        getattr(transformers, name)


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    resolve_lazy_imports()
    demo = build_app()
    from studio.hosted import launch_options
    from studio.serving.server import mount

    demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, show_error=True,
                                                   prevent_thread_lock=True,
                                                   **launch_options())  # hosted: auth, upload limit
    mount(demo.server_app)  # the OpenAI-compatible API under /v1: same process, same engine as the Chat tab
    print(f"OpenAI-compatible API: http://{host}:{port}/v1 (docs/serving.md)", flush=True)
    demo.block_thread()
