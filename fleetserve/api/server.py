"""The OpenAI-compatible HTTP server: the FastAPI app factory and a uvicorn runner that drains on SIGTERM.

    state = ServerState(ServerOptions(port=8000), EngineConfig())
    run_server(state)            # blocks; returns the exit code

The model loads on a background thread, so /health answers 503 from the first second and 200 once the
engine steps. On SIGTERM new generation requests get 503, in-flight ones get --shutdown-timeout seconds to
finish and are aborted after that, and the process exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import asynccontextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from fleetserve.api import chat, completions, kv_events, kv_transfer
from fleetserve.api.batch_api import BatchAPI
from fleetserve.api.batch_config import BatchOptions
from fleetserve.api.errors import install_error_handlers
from fleetserve.api.metrics import CONTENT_TYPE
from fleetserve.api.middleware import Admission, BodySizeLimit
from fleetserve.api.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    KVEventsResponse,
    ModelCard,
    ModelList,
)
from fleetserve.api.sse import EventStreamResponse
from fleetserve.api.state import ServerState
from fleetserve.wire import paths
from fleetserve.wire.kv_transfer import kv_transfer_path

logger = logging.getLogger("fleetserve.api")

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 429, 503)}


def package_version() -> str:
    try:
        return version("fleetserve")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(state: ServerState, batches: BatchOptions | None = None) -> FastAPI:
    """The server's app; with `batches`, also the Batch API (its routes, and its runner in the lifespan)."""
    batch_api = BatchAPI(batches, state.engine_config.cache_dir) if batches is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        try:
            async with batch_api.running(app) if batch_api is not None else nullcontext():
                yield
        finally:
            await state.shutdown_engine(0 if state.draining else state.options.shutdown_timeout_s)

    app = FastAPI(title="fleetserve", version=package_version(), lifespan=lifespan,
                  description="OpenAI-compatible API over one fleetserve engine replica")
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, state=state)
    app.add_middleware(Admission, state=state)  # outermost: added last
    if batch_api is not None:
        app.include_router(batch_api.router)

    @app.post(paths.CHAT_COMPLETIONS, responses={200: {"model": ChatCompletionResponse}, **_ERRORS})
    async def create_chat_completion(request: Request, body: ChatCompletionRequest) -> Response:
        return await chat.create_chat_completion(state, request, body)

    @app.post(paths.COMPLETIONS, responses={200: {"model": CompletionResponse}, **_ERRORS})
    async def create_completion(request: Request, body: CompletionRequest) -> Response:
        return await completions.create_completion(state, request, body)

    @app.get(paths.MODELS, response_model=ModelList)
    async def list_models() -> ModelList:
        max_len = state.aengine.engine.max_model_len if state.aengine is not None else None
        return ModelList(data=[ModelCard(id=name, max_model_len=max_len) for name in state.model_names])

    @app.get(paths.HEALTH, responses={503: {"model": ErrorResponse}})
    async def health() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ok"})
        status = ("draining" if state.draining else "failed" if state.load_error is not None else "loading")
        return JSONResponse({"status": status, "error": state.load_error}, 503)

    @app.get("/version")
    async def show_version() -> dict:
        return {"version": package_version()}

    @app.get(paths.METRICS)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get(paths.KV_EVENTS, response_model=KVEventsResponse, responses={503: {"model": ErrorResponse}})
    async def get_kv_events(since: int = Query(0, ge=0, le=2**62, description="first batch seq wanted")) -> dict:
        return kv_events.snapshot(state, since)

    @app.get(paths.KV_EVENTS_STREAM, responses={503: {"model": ErrorResponse}})
    async def stream_kv_events(since: int = Query(0, ge=0, le=2**62)) -> Response:
        state.require_engine()
        return EventStreamResponse(kv_events.event_stream(state, since))

    @app.get(kv_transfer_path("{request_id}"), responses={404: {"model": ErrorResponse}})
    async def get_kv_transfer(request_id: str, start: int = Query(0, ge=0, description="first prompt token wanted")
                              ) -> Response:
        """A prefilled prompt's KV, once, for the decode replica (fleetserve.wire.kv_transfer)."""
        return await kv_transfer.serve_export(state, request_id, start)

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain on the first SIGTERM/SIGINT: refuse new work, let the engine finish
    or abort what is in flight, let the responses flush, then exit. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is None or self.state.aengine is None:
            super().handle_exit(sig, frame)
        elif self.drain_task is None:
            self.loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)
        elif sig == signal.SIGINT:
            super().handle_exit(sig, frame)  # Ctrl-C again: stop waiting
        # A repeated SIGTERM (process managers and wrappers often send two) must not cut the drain short.

    def _start_drain(self, reason: str) -> None:
        if self.drain_task is None:
            self.drain_task = self.loop.create_task(self.drain(reason))

    def request_exit(self) -> None:
        """Thread-safe: used when the model fails to load."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(setattr, self, "should_exit", True)
        else:
            self.should_exit = True

    async def drain(self, reason: str) -> None:
        state = self.state
        timeout = state.options.shutdown_timeout_s
        logger.info("fleetserve: %s received; draining (finishing in-flight requests for up to %.1fs)", reason,
                    timeout)
        state.draining = True
        await state.shutdown_engine(timeout)
        # The engine is done; give the responses a moment to send their last events.
        deadline = time.monotonic() + 5.0
        while state.active_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        logger.info("fleetserve: drained; exiting")
        self.should_exit = True


def configure_logging(level: str) -> None:
    """uvicorn configures only its own loggers; ours get one stderr handler in the same style."""
    fleet_logger = logging.getLogger("fleetserve")
    if not fleet_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        fleet_logger.addHandler(handler)
        fleet_logger.propagate = False
    fleet_logger.setLevel(level.upper())


def run_server(state: ServerState, batches: BatchOptions | None = None) -> int:
    options = state.options
    configure_logging(options.log_level)
    config = uvicorn.Config(create_app(state, batches), host=options.host, port=options.port,
                            log_level=options.log_level, access_log=options.access_log, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = DrainingServer(config, state)

    def loaded() -> None:
        if state.load_error is not None:
            server.request_exit()

    state.start_loading(loaded)
    logger.info("fleetserve: loading the model; GET %s/health answers 503 until it is ready", options.url)
    server.run()
    return 1 if state.load_error is not None else 0
