"""Running batch lines through an OpenAI-compatible ASGI app in-process, so a batch line gets exactly the
validation and the response of the live endpoint. Every line runs as the offline service class.

A line refused with 429 (queue full) or 503 (loading, draining) is not answered: it waits and is tried
again, or, when the run stops first, stays unanswered for the next run.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

import httpx

from fleetserve.api.batch_results import error_line, failed_response_line, output_line
from fleetserve.api.batch_store import new_id
from fleetserve.wire.errors import describe_error
from fleetserve.wire.service_class import OFFLINE, SERVICE_CLASS_HEADER

logger = logging.getLogger("fleetserve.api")

DEFERRED_STATUSES = (429, 503)
# (line index, custom_id, {"url", "body"})
PendingLine = tuple[int, str, dict]
OnResult = Callable[[int, str, dict], None]


class LineDeferred(Exception):
    """The endpoint could not take the line now (429 or 503); it has no answer yet."""


def in_process_client(app: object) -> httpx.AsyncClient:
    # No timeout: a line takes as long as its generation; the app's own errors come back as responses.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),  # type: ignore[arg-type]
                             base_url="http://batch.local", timeout=None)


async def run_line(client: httpx.AsyncClient, custom_id: str, request: dict) -> tuple[str, dict]:
    """("output" or "error", the line's answer in OpenAI's output format); raises LineDeferred."""
    body = dict(request["body"])
    if "service_class" in body:
        body["service_class"] = OFFLINE  # a batch line cannot make itself online
    try:
        response = await client.post(request["url"], json=body, headers={SERVICE_CLASS_HEADER: OFFLINE})
    except httpx.HTTPError as exc:
        return "error", error_line(custom_id, "request_failed", f"the request could not be run: {describe_error(exc)}")
    if response.status_code in DEFERRED_STATUSES:
        raise LineDeferred(response.text[:300])
    request_id = response.headers.get("x-request-id") or new_id("req_")
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"message": response.text[:1000], "code": response.status_code}}
    if response.status_code == 200:
        return "output", output_line(custom_id, 200, request_id, payload)
    return "error", failed_response_line(custom_id, response.status_code, request_id, payload)


async def run_lines(client: httpx.AsyncClient, lines: Iterable[PendingLine], slots: asyncio.Semaphore,
                    on_result: OnResult, stopped: Callable[[], bool], retry_delay_s: float) -> None:
    """Run lines, as many at once as `slots` allows, handing each answer to on_result as it comes. No new
    line starts once stopped() is true; lines already running finish."""
    running: set[asyncio.Task] = set()

    async def one(index: int, custom_id: str, request: dict) -> None:
        try:
            while True:
                try:
                    outcome, result = await run_line(client, custom_id, request)
                except LineDeferred as exc:
                    logger.debug("fleetserve: batch line %d deferred: %s", index, exc)
                    if stopped():
                        return
                    await asyncio.sleep(retry_delay_s)
                    continue
                on_result(index, outcome, result)
                return
        finally:
            slots.release()

    try:
        for index, custom_id, request in lines:
            await slots.acquire()
            if stopped():
                slots.release()
                break
            task = asyncio.create_task(one(index, custom_id, request))
            running.add(task)
            task.add_done_callback(running.discard)
        while running:
            await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
