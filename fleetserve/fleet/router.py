"""The router: one OpenAI-compatible endpoint in front of many replicas, and its admin API.

    config = RouterConfig(backends=["http://127.0.0.1:8001", "http://127.0.0.1:8002"], policy="prefix")
    run_router(config)           # blocks; returns the exit code

Endpoints: POST /v1/chat/completions and /v1/completions (routed, streamed straight through), GET
/v1/models (the models of the healthy replicas), GET /health (200 while a replica is healthy), GET
/metrics, GET/POST/DELETE /admin/replicas to list, add and remove replicas at run time, POST
/admin/replicas/{id}/drain to take one out of the fleet gently, GET /admin/scaling (a fleet whose replicas
the launcher manages: the autoscaler's settings and the scaling timeline), and (with RouterConfig.batches)
the Batch API: /v1/files and /v1/batches.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import AsyncIterator, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.api.batch_api import BatchAPI
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.disaggregation import check_role
from fleetserve.fleet.health import PROBE_TIMEOUT_S, probe_backend
from fleetserve.fleet.proxy import forward
from fleetserve.fleet.replicas import DuplicateReplica, UnknownReplica, normalize_backend_url, parse_backend
from fleetserve.fleet.request_info import PromptTokenizer, describe_call
from fleetserve.fleet.router_metrics import CONTENT_TYPE
from fleetserve.fleet.router_state import SESSION_HEADER, RouterState
from fleetserve.wire import paths
from fleetserve.wire.error_handlers import install_error_handlers
from fleetserve.wire.errors import APIError, bad_request, too_large
from fleetserve.wire.model_probe import NotAnOpenAIServer
from fleetserve.wire.urls import InvalidServerURL

logger = logging.getLogger("fleetserve.fleet")


class AddReplica(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="the backend's root URL, e.g. http://10.0.0.5:8000")
    id: str | None = Field(None, min_length=1, description="a name for it (default: host:port)")
    weight: float = Field(1.0, gt=0, description="relative capacity, for mixed hardware")
    pool: str | None = Field(None, min_length=1, description="its hardware pool, as a routing plan names it (a100)")
    role: str = Field("mixed", description="mixed, prefill (computes prompts for decode replicas) or decode")


class FleetKeeper(Protocol):
    """What keeps the replicas of a launched fleet (fleetserve.fleet.scaling_loop), run with the router."""

    def running(self) -> AbstractAsyncContextManager[None]: ...

    def describe(self) -> dict: ...


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    body = await request.body()
    if len(body) > limit:
        raise too_large(len(body), limit)
    return body


def create_router_app(router: RouterState, keeper: FleetKeeper | None = None) -> FastAPI:
    """The router's app; with `RouterConfig.batches`, also the Batch API, whose lines go through this very
    app (so through the routing and the offline gate) as offline requests. A `keeper` runs alongside."""
    batch_api = BatchAPI(router.config.batches) if router.config.batches is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            async with batch_api.running(app) if batch_api is not None else nullcontext(), \
                    keeper.running() if keeper is not None else nullcontext():
                yield
        finally:
            await router.stop()

    app = FastAPI(title="fleetserve router", lifespan=lifespan,
                  description="One OpenAI-compatible endpoint in front of many replicas")
    app.state.router = router
    install_error_handlers(app)
    if batch_api is not None:
        app.include_router(batch_api.router)

    async def route(request: Request, endpoint: str) -> Response:
        status = 500
        try:
            policy = router.policy_for(request.headers)
            raw = await read_body(request, router.config.max_body_bytes)
            call = describe_call(endpoint, raw, router.tokenizer, router.config.default_max_tokens,
                                 request.headers.get(SESSION_HEADER), request.headers)
            router.check_model(call.model)
            response = await forward(router, request, paths.GENERATION_PATHS[endpoint], raw, call, policy)
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        finally:
            router.metrics.requests.labels(endpoint, str(status)).inc()

    @app.post(paths.CHAT_COMPLETIONS)
    async def chat_completions(request: Request) -> Response:
        return await route(request, "chat")

    @app.post(paths.COMPLETIONS)
    async def completions(request: Request) -> Response:
        return await route(request, "completions")

    @app.get(paths.MODELS)
    async def list_models() -> JSONResponse:
        if not router.registry.healthy():
            raise APIError(503, f"no healthy replica: {router.describe_unhealthy()}", None, "no_healthy_replica",
                           {"Retry-After": str(router.config.retry_after_s)})
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "fleetserve"}
            for name in router.served_models()]})

    @app.get(paths.HEALTH)
    async def health() -> JSONResponse:
        healthy = len(router.registry.healthy())
        body = {"status": "ok" if healthy else "no_healthy_replica", "healthy_replicas": healthy,
                "replicas": len(router.registry)}
        if not healthy:
            body["error"] = router.describe_unhealthy()
        return JSONResponse(body, 200 if healthy else 503)

    @app.get(paths.METRICS)
    async def metrics() -> Response:
        return Response(router.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/admin/replicas")
    async def list_replicas() -> JSONResponse:
        return JSONResponse({"policy": router.config.policy,
                             "replicas": [r.describe() for r in router.registry]})

    @app.post("/admin/replicas", status_code=201)
    async def add_replica(body: AddReplica) -> JSONResponse:
        try:
            check_role(body.role)
        except ValueError as exc:
            raise bad_request(str(exc), "role") from None
        try:
            replica = await router.add_backend(body.url, body.id, body.weight, body.pool, body.role)
        except (NotAnOpenAIServer, InvalidServerURL) as exc:
            raise bad_request(str(exc), "url") from None
        except DuplicateReplica as exc:
            raise APIError(409, str(exc)) from None
        except ValueError as exc:  # removed again while it was being added
            raise bad_request(str(exc)) from None
        return JSONResponse(replica.describe(), 201)

    @app.post("/admin/replicas/{replica_id}/drain")
    async def drain_replica(replica_id: str) -> JSONResponse:
        try:
            replica = router.drain(replica_id)
        except UnknownReplica as exc:
            raise APIError(404, str(exc.args[0]), "replica_id", "replica_not_found") from None
        return JSONResponse({"draining": replica.describe()})

    @app.get("/admin/scaling")
    async def scaling() -> JSONResponse:
        if keeper is None:
            raise APIError(404, "this router does not manage its replicas; the scaling timeline is kept by "
                                "`fleetserve serve --replicas N` (with --autoscale to scale)", None, "not_found")
        return JSONResponse(keeper.describe())

    @app.delete("/admin/replicas/{replica_id}")
    async def remove_replica(replica_id: str) -> JSONResponse:
        try:
            replica = await router.remove_backend(replica_id)
        except UnknownReplica as exc:
            raise APIError(404, str(exc.args[0]), "replica_id", "replica_not_found") from None
        return JSONResponse({"removed": replica.describe()})

    @app.delete("/admin/replicas")
    async def remove_replica_by_url(url: str) -> JSONResponse:
        replica = router.registry.by_url(url)
        if replica is None:
            raise APIError(404, f"no replica has the URL {url!r}; registered: "
                                f"{[r.url for r in router.registry]}", "url", "replica_not_found")
        return await remove_replica(replica.replica_id)

    return app


def load_prompt_tokenizer(spec: str | None) -> PromptTokenizer | None:
    """"default": fleetserve's default model's tokenizer; a model folder or tokenizer.json; None: none."""
    if spec is None or spec.lower() == "none":
        return None
    from fleetserve.model.tokenizer import Tokenizer
    if spec == "default":
        from fleetserve.model.loader import resolve_model
        try:
            return Tokenizer(resolve_model(None))
        except ValueError as exc:
            raise ValueError(f"cannot load the default model's tokenizer ({exc}); pass --tokenizer PATH or "
                             f"--tokenizer none") from None
    path = Path(spec).expanduser()
    folder = path.parent if path.name == "tokenizer.json" else path
    if not (folder / "tokenizer.json").is_file():
        from fleetserve.model.loader import resolve_model
        folder = resolve_model(spec)  # a .gguf file or hub id: the model's own tokenizer
    return Tokenizer(folder)


async def check_backends(backends: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, before serving, a backend that answers but is not an OpenAI server (a typo'd port, a web
    server). Backends that do not answer yet are fine: they join when healthy."""
    import httpx
    urls = [parse_backend(backend)[0] for backend in backends]
    for url in urls:
        normalize_backend_url(url)
    async with httpx.AsyncClient(trust_env=False) as client:
        results = await asyncio.gather(*(probe_backend(client, normalize_backend_url(u), timeout_s) for u in urls),
                                       return_exceptions=True)
    for result in results:
        if isinstance(result, NotAnOpenAIServer):
            raise result


def configure_logging(level: str) -> None:
    fleet_logger = logging.getLogger("fleetserve")
    if not fleet_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        fleet_logger.addHandler(handler)
        fleet_logger.propagate = False
    fleet_logger.setLevel(level.upper())


class RouterServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or Ctrl-C that stops it gracefully is a normal exit (code 0), not
    re-raised once the server has stopped, so a launcher can still stop its replicas afterwards."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def build_server(config: RouterConfig, tokenizer: PromptTokenizer | None, router: RouterState | None = None,
                 keeper: FleetKeeper | None = None) -> uvicorn.Server:
    app = create_router_app(router or RouterState(config, tokenizer), keeper)
    return RouterServer(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                         access_log=config.access_log, timeout_graceful_shutdown=10,
                                         lifespan="on"))


def run_router(config: RouterConfig) -> int:
    configure_logging(config.log_level)
    asyncio.run(check_backends(config.backends))
    tokenizer = load_prompt_tokenizer(config.tokenizer)
    server = build_server(config, tokenizer)
    logger.info("fleetserve router: %d backend(s), policy %s, at %s/v1", len(config.backends), config.policy,
                config.url)
    if any(role != "mixed" for role in config.roles):
        logger.info("fleetserve router: replica roles %s, %s disaggregation", ",".join(config.roles),
                    config.disaggregation.mode)
    server.run()
    return 0
