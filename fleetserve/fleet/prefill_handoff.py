"""A request's prompt prefilled on a prefill replica and its KV handed to the decode replica, over the
protocol vLLM's disaggregation proxies drive (fleetserve.wire.kv_transfer).

The router sends the prefill replica the client's body with `max_tokens` 1, not streamed, and
`kv_transfer_params` = {"do_remote_decode": true, ...}; the answer's own `kv_transfer_params` say where the
prompt's KV waits, and the client's body with them added goes to the decode replica, which fetches the KV
and decodes. The hand-off is tried once per request, on its first attempt (a retry elsewhere carries the
same `kv_transfer_params`). Any failure (no connection, an error status, the prefill replica ejected, an
answer without `kv_transfer_params`, no answer within `RouterConfig.prefill_timeout_s`) is logged and
counted, and the decode replica gets the client's body unchanged and prefills locally: the client sees no
error. A request with n > 1, several prompts, or `kv_transfer_params` of its own (an outer proxy drives the
hand-off) is prefilled where it decodes.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import httpx

from fleetserve.fleet.replicas import Replica, Ticket
from fleetserve.fleet.request_info import RoutedCall
from fleetserve.wire.errors import describe_error

if TYPE_CHECKING:
    from fleetserve.fleet.router_state import RouterState, Routing

KV_TRANSFER_PARAMS = "kv_transfer_params"
REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
_BODY_CHARS = 200


def can_hand_off(body: dict[str, Any]) -> bool:
    prompt = body.get("prompt")
    several_prompts = isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)
    return KV_TRANSFER_PARAMS not in body and body.get("n", 1) == 1 and not several_prompts


def prefill_body(body: dict[str, Any]) -> bytes:
    prefill = {key: value for key, value in body.items() if key not in ("stream_options", "min_tokens")}
    prefill.update({KV_TRANSFER_PARAMS: dict(REMOTE_DECODE), "stream": False, "max_tokens": 1})
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    return json.dumps(prefill).encode()


class PrefillFailed(Exception):
    def __init__(self, reason: str, error: str, health: bool, conclusive: bool = False) -> None:
        super().__init__(error)
        self.reason = reason  # the metric label
        self.error = error
        self.health = health  # the failure says the prefill replica is unwell
        self.conclusive = conclusive


class PrefillHandoff:
    """One request's way to its decode replicas: the body each attempt sends, and whether its prompt's KV was
    handed off (then the decode replica has no prefill of its own to count)."""

    def __init__(self, router: RouterState, path: str, raw_body: bytes, headers: dict[str, str],
                 call: RoutedCall) -> None:
        self.router = router
        self.path = path
        self.body = raw_body
        self.headers = headers
        self.call = call
        self.handed_off = False
        self._tried = False

    async def begin(self, routing: Routing) -> Ticket:
        """The decode replica's ticket for this attempt, after the prefill hand-off when the rule chose a
        prefill replica and this request has not tried one yet."""
        replica, call = routing.replica, self.call
        local_prefill = 0 if self.handed_off else max(call.prompt_tokens - routing.cached_tokens, 0)
        if routing.prefill is None or self._tried:
            return replica.begin(local_prefill, call.max_output_tokens, time.monotonic(), offline=call.offline)
        self._tried = True
        data = json.loads(self.body)
        if not can_hand_off(data):
            return replica.begin(local_prefill, call.max_output_tokens, time.monotonic(), offline=call.offline)
        # The output counts from now, so routing sees the decode replica's share during the hand-off.
        ticket = replica.begin(0, call.max_output_tokens, time.monotonic(), offline=call.offline)
        try:
            params = await self._prefill(routing.prefill, routing.prefill_cached_tokens, data)
        except BaseException:
            self.router.request_ended(replica, ticket)
            raise
        if params is None:
            self.router.request_ended(replica, ticket)
            return replica.begin(local_prefill, call.max_output_tokens, time.monotonic(), offline=call.offline)
        self.body = json.dumps({**data, KV_TRANSFER_PARAMS: params}).encode()
        self.handed_off = True
        return ticket

    async def _prefill(self, prefill: Replica, cached_tokens: int, data: dict[str, Any]) -> dict[str, Any] | None:
        """The prefill replica's kv_transfer_params, or None (counted and logged) when it failed."""
        router = self.router
        started = time.monotonic()
        ticket = prefill.begin(max(self.call.prompt_tokens - cached_tokens, 0), 1, started, offline=self.call.offline)
        router.record_routed(prefill, self.call, started)
        try:
            params = await self._ask(prefill, prefill_body(data))
            prefill.first_byte(ticket, time.monotonic())  # a one-token answer times the prefill
        except PrefillFailed as failure:
            router.prefill_failed(prefill, failure.reason, failure.error, failure.health, failure.conclusive)
            return None
        finally:
            router.request_ended(prefill, ticket)
        router.metrics.remote_prefills.labels(prefill.replica_id).inc()
        router.metrics.prefill_handoff_seconds.labels(prefill.replica_id).observe(time.monotonic() - started)
        return params

    async def _ask(self, prefill: Replica, body: bytes) -> dict[str, Any]:
        """POST the prefill request, unless the replica is ejected or the time-out passes first."""
        config = self.router.config
        request = self.router.client.build_request(
            "POST", prefill.url + self.path, content=body, headers=self.headers,
            timeout=httpx.Timeout(config.prefill_timeout_s, connect=config.connect_timeout_s))
        sending = asyncio.ensure_future(self.router.client.send(request))
        ejected = asyncio.ensure_future(self.router.ejection_of(prefill).wait())
        try:
            await asyncio.wait({sending, ejected}, timeout=config.prefill_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ejected.cancel()
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
        if sending.cancelled():
            if ejected.done() and not ejected.cancelled():
                raise PrefillFailed("ejected", f"the replica was ejected ({prefill.last_error})", health=False)
            raise PrefillFailed("timeout", f"no answer within {config.prefill_timeout_s:g}s", health=True)
        try:
            response = sending.result()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PrefillFailed("connect", describe_error(exc), health=True,
                                conclusive=isinstance(exc, httpx.ConnectError)) from None
        except httpx.TimeoutException as exc:
            raise PrefillFailed("timeout", describe_error(exc), health=True) from None
        except httpx.HTTPError as exc:
            raise PrefillFailed("transport", describe_error(exc), health=True) from None
        return _transfer_params(response)


def _transfer_params(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise PrefillFailed("http_status", f"HTTP {response.status_code}: {response.text[:_BODY_CHARS]}",
                            health=response.status_code >= 500)
    try:
        params = response.json().get(KV_TRANSFER_PARAMS)
    except (ValueError, AttributeError):
        params = None
    if not isinstance(params, dict):
        raise PrefillFailed("no_kv_transfer_params", "its answer carries no kv_transfer_params object (an engine "
                            "without KV transfer?)", health=False)
    return params
