"""What one server instance holds: its options, the engine (loaded on a background thread so /health
answers from the first second), the served model names, metrics, and the draining flag."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fleetserve.api.metrics import ServerMetrics
from fleetserve.engine.config import EngineConfig
from fleetserve.model.loader import DEFAULT_MODEL
from fleetserve.wire.errors import DEFAULT_MAX_BODY_BYTES, model_not_found, unavailable
from fleetserve.wire.urls import server_url

if TYPE_CHECKING:
    from fleetserve.api.logprobs import TokenText
    from fleetserve.engine.async_engine import AsyncLLMEngine
    from fleetserve.model.tokenizer import Tokenizer

logger = logging.getLogger("fleetserve.api")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: list[str] = field(default_factory=list)
    max_queue: int = EngineConfig.max_queue
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    access_log: bool = True
    kv_transfer_timeout_s: float = 30.0  # a decode replica's fetch of prefilled KV; past it, it prefills itself

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"--shutdown-timeout must be >= 0 seconds, got {self.shutdown_timeout_s}")
        if not self.kv_transfer_timeout_s > 0:
            raise ValueError(f"--kv-transfer-timeout must be positive seconds, got {self.kv_transfer_timeout_s}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}")

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)


class EngineStopped(Exception):
    """Handed to streams still open once the engine loop has stopped, so none waits forever."""


class ServerState:
    def __init__(self, options: ServerOptions, engine_config: EngineConfig) -> None:
        self.options = options
        # The router's cache-aware policy reads the KV-event feed, so the server always records events.
        self.engine_config = dataclasses.replace(engine_config, record_kv_events=True)
        self.model_names = list(options.served_model_names) or [engine_config.model or DEFAULT_MODEL]
        self.aengine: AsyncLLMEngine | None = None
        self.tokenizer: Tokenizer | None = None
        self.token_text: TokenText | None = None
        self.load_error: str | None = None
        self.draining = False
        self.active_requests = 0
        self.open_streams: set[asyncio.Queue] = set()
        self.metrics = ServerMetrics(self.model_names[0], lambda: self.aengine)
        self._loader: threading.Thread | None = None  # loads the model, then runs the engine loop
        self._loaded = threading.Event()

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    @property
    def ready(self) -> bool:
        return self.aengine is not None and not self.draining

    def start_loading(self, on_done: Callable[[], None] | None = None) -> None:
        if self._loader is not None:
            return
        self._loader = threading.Thread(target=self._load, args=(on_done,), name="fleetserve-engine", daemon=True)
        self._loader.start()

    def _load(self, on_done: Callable[[], None] | None) -> None:
        try:
            from fleetserve.api.logprobs import TokenText
            from fleetserve.engine.async_engine import AsyncLLMEngine
            from fleetserve.engine.engine import LLMEngine
            engine = LLMEngine(self.engine_config)
            self.tokenizer = engine.tokenizer
            self.token_text = TokenText(engine.tokenizer)
            # This thread built the engine, so it also steps it (see fleetserve.engine.async_engine).
            aengine = AsyncLLMEngine(engine, self.options.max_queue, on_output=self.metrics.on_output,
                                     own_thread=False)
            self.aengine = aengine
            logger.info("fleetserve: serving %s (max_model_len %d, %d KV blocks of %d tokens) at %s/v1",
                        self.model_name, engine.max_model_len, engine.kv_cache.num_blocks, engine.kv_cache.block_size,
                        self.options.url)
        except BaseException as exc:  # noqa: BLE001 - reported by /health and by the exit code
            self.load_error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (ValueError, OSError)):  # bad --model, size or path: the message says it all
                logger.error("fleetserve: the model failed to load: %s", exc)
            else:
                logger.exception("fleetserve: the model failed to load")
            return
        finally:
            self._loaded.set()
            if on_done is not None:
                on_done()
        aengine.run()

    def wait_loaded(self, timeout_s: float | None = None) -> bool:
        if self._loader is not None:
            self._loaded.wait(timeout_s)
        return self.aengine is not None

    def require_engine(self) -> AsyncLLMEngine:
        if self.draining:
            raise unavailable("the server is shutting down and accepts no new requests; use another replica")
        if self.load_error is not None:
            raise unavailable(f"the model failed to load ({self.load_error}); see the server log")
        if self.aengine is None:
            raise unavailable("the model is still loading; retry when GET /health answers 200")
        return self.aengine

    def resolve_model(self, name: str | None) -> str:
        if name is None or name == "":
            return self.model_name
        if name not in self.model_names:
            raise model_not_found(name, self.model_names)
        return name

    async def shutdown_engine(self, timeout_s: float) -> None:
        """Finish in-flight requests for up to timeout_s, abort the rest, stop the engine thread."""
        aengine = self.aengine
        if aengine is not None and not aengine.stopping:
            await aengine.shutdown(timeout_s)
        for queue in list(self.open_streams):
            queue.put_nowait(EngineStopped())
