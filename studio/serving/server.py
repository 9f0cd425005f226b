"""`python -m studio serve`: the OpenAI-compatible API alone (uvicorn), and the same routes mounted under
/v1 of the Gradio app (`mount`), where they share the Chat tab's engine."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.errors import ConfigError


def parse_adapters(items: list[str]) -> dict[str, Path | None]:
    """`--adapters` values: a registry name ("run:<id>", an imported name) or NAME=FOLDER."""
    found: dict[str, Path | None] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not name.strip() or (sep and not path.strip()):
            raise ConfigError(f"--adapters {item!r} is neither a registry name nor NAME=FOLDER.",
                              "Pass e.g. --adapters run:20240101-abc or --adapters medical=/path/to/adapter.")
        found[name.strip()] = Path(path.strip()) if sep else None
    return found


def create_app(backend):
    """A FastAPI app with the /v1 routes (and a health check at /)."""
    from fastapi import FastAPI

    from studio.serving.api import router

    app = FastAPI(title="Tuning Studio API", docs_url="/docs")
    app.include_router(router(backend), prefix="/v1")
    openai_errors(app)

    @app.get("/")
    async def health():
        return {"status": "ok", "api": "/v1", "models": "/v1/models"}

    return app


def openai_errors(app) -> None:
    """Unknown routes, wrong methods and any unhandled failure answered in OpenAI's error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from studio.serving.api import ApiError, _from_studio

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        hint = " The API's routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions."
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}.{hint}",
                        "invalid_request_error", "not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return ApiError(400, f"The request is not valid: {exc.errors()}"[:500], "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        return _from_studio(exc).response()


def serve(host: str, port: int, model: str, quant: str, adapters: dict[str, Path | None], max_batch: int,
          max_queue: int, max_kv_tokens: int | None = None, max_adapters: int | None = None) -> None:
    import uvicorn

    from studio.inference import Engine
    from studio.serving.api import Backend

    print(f"Loading {model} ({quant})...", file=sys.stderr)
    engine = Engine(model, quant, max_batch=max_batch, max_queue=max_queue, max_kv_tokens=max_kv_tokens,
                    max_adapters=max_adapters, progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    print(f"KV-cache budget {engine.max_kv_tokens:,} tokens, up to {engine.max_adapters} adapters attached",
          file=sys.stderr)
    extra = {}
    for name, path in adapters.items():
        ms = engine.load_adapter(name, path)  # checked now: a wrong adapter stops the server before it starts
        print(f"adapter {name} loaded in {ms:.0f} ms", file=sys.stderr)
        if path is not None:
            extra[name] = path
    backend = Backend(lambda: engine, extra, chosen_in="--model")
    print(f"OpenAI-compatible API on http://{host}:{port}/v1 (models: "
          f"{', '.join(backend.model_ids(engine))})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(backend), host=host, port=port, log_level="warning")


def app_backend():
    """The Gradio app's backend: the engine the Model tab loaded (studio.inference.serving_engine), else
    the default model in fp32; a request for another base is refused with a 404 that names the one served."""
    from studio.inference import serving_engine
    from studio.serving.api import Backend

    return Backend(serving_engine, chosen_in="the Model tab")


def mount(app) -> None:
    """Add the /v1 routes to a running Gradio app (its FastAPI server), ahead of Gradio's own routes."""
    from studio.serving.api import router

    before = len(app.router.routes)
    app.include_router(router(app_backend()), prefix="/v1")
    added = app.router.routes[before:]
    app.router.routes[:] = added + app.router.routes[:before]  # Gradio's catch-all routes must not shadow /v1
