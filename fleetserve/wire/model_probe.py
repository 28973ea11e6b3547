"""GET /v1/models: is a server an OpenAI-compatible one, and which models does it serve."""
from __future__ import annotations

import httpx

from fleetserve.wire.errors import describe_error
from fleetserve.wire.paths import MODELS

_BODY_CHARS = 200


class ModelProbeError(ValueError):
    """GET /v1/models did not return a model list."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class ServerUnreachable(ModelProbeError):
    """Nothing answered (refused, timed out, reset): the server may still be starting."""


class NotAnOpenAIServer(ModelProbeError):
    """Something answered, but not with a model list: a wrong port, another kind of web server."""


async def probe_models(client: httpx.AsyncClient, root: str, timeout_s: float,
                       what: str = "the server at") -> list[str]:
    """The model ids served at the server root `root`; errors name the server as f"{what} {root}"."""
    target = f"{root}{MODELS}"
    try:
        response = await client.get(target, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(root, f"cannot reach {what} {root}: GET {target} failed "
                                      f"({describe_error(exc)})") from None
    if response.status_code != 200:
        raise NotAnOpenAIServer(root, f"{what} {root} is not an OpenAI-compatible server: GET {target} answered "
                                      f"HTTP {response.status_code} {response.text[:_BODY_CHARS]!r}")
    try:
        return [str(entry["id"]) for entry in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise NotAnOpenAIServer(root, f"{what} {root} is not an OpenAI-compatible server: GET {target} returned "
                                      f"{response.text[:_BODY_CHARS]!r}, not a model list") from None
