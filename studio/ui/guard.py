"""Every function of the built app asks studio.policy before it runs: no handler can skip the check.

`guard(demo)` wraps each registered event function (buttons, timers, page loads, followers) in a
check keyed by its api_name. A refusal is a gr.Error: a red toast in the page, an AppError for a
gradio_client caller. Locally (hosted mode off) the check allows everything and costs a dict lookup.
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from studio import policy


def _refuse(exc: policy.AccessError) -> gr.Error:
    return gr.Error(f"{exc.message} {exc.fix}".strip(), title="Not allowed here")


def checked(function, action: str):
    """`function` with `policy.check(action)` first; generators stay generators, coroutines coroutines."""
    def ask() -> None:
        try:
            policy.check(action)
        except policy.AccessError as exc:
            raise _refuse(exc) from exc

    if inspect.isasyncgenfunction(function):
        async def wrapper(*args, **kwargs):
            ask()
            async for item in function(*args, **kwargs):
                yield item
    elif inspect.isgeneratorfunction(function):
        def wrapper(*args, **kwargs):
            ask()
            yield from function(*args, **kwargs)
    elif inspect.iscoroutinefunction(function):
        async def wrapper(*args, **kwargs):
            ask()
            return await function(*args, **kwargs)
    else:
        def wrapper(*args, **kwargs):
            ask()
            return function(*args, **kwargs)
    functools.update_wrapper(wrapper, function)  # Gradio reads the signature (gr.Request, gr.Progress) through it
    wrapper.__studio_action__ = action
    return wrapper


def guard(demo: gr.Blocks) -> list[str]:
    """Wrap every function of `demo`; returns the api_names that the policy table does not know (refused
    on a hosted studio, so a new endpoint is off until someone classes it)."""
    unknown = []
    for block_fn in demo.fns.values():
        if block_fn.fn is None or getattr(block_fn.fn, "__studio_action__", None):
            continue
        action = block_fn.api_name or block_fn.name or ""
        if policy.action_key(action) not in policy.ACTIONS:
            unknown.append(action)
        block_fn.fn = checked(block_fn.fn, action)
    return unknown
