"""The batch runner on a stand-in app (no model): the Batch API mounts on any FastAPI app with the OpenAI
endpoints and /health; a line refused with 429 or 503 is retried, not answered; a batch past its window
expires with its unanswered lines as batch_expired; a deleted input file fails the batch; a batch
cancelled while it waits ends cancelled."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.api.batch_api import BatchAPI
from fleetserve.api.batch_config import BatchOptions

FINAL = ("completed", "failed", "expired", "cancelled")


def stand_in_app(refusals: dict[str, int], healthy: list[bool]) -> FastAPI:
    """Echoes each chat request; the first refusals[custom text] calls for a text are answered 429."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, 200 if healthy[0] else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "stand-in", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        text = body["messages"][0]["content"]
        if refusals.get(text, 0) > 0:
            refusals[text] -= 1
            return JSONResponse({"error": {"message": "full", "code": "queue_full"}}, 429)
        return JSONResponse({"object": "chat.completion", "echo": text,
                             "service_class": request.headers.get("x-service-class")})

    return app


def request_line(custom_id: str, text: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": text}]}}) + "\n"


async def with_batches(tmp_path: Path, app: FastAPI, work) -> None:
    batches = BatchAPI(BatchOptions(db_path=str(tmp_path / "b.sqlite3"), poll_interval_s=0.05, retry_delay_s=0.01))
    app.include_router(batches.router)
    async with batches.running(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await work(client, batches)


async def create(client: httpx.AsyncClient, content: str) -> str:
    file_id = (await client.post("/v1/files", files={"file": ("in.jsonl", content.encode())},
                                 data={"purpose": "batch"})).json()["id"]
    response = await client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


async def final(client: httpx.AsyncClient, batch_id: str) -> dict:
    deadline = time.monotonic() + 10
    while (batch := (await client.get(f"/v1/batches/{batch_id}")).json())["status"] not in FINAL:
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.02)
    return batch


async def content_lines(client: httpx.AsyncClient, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await client.get(f"/v1/files/{file_id}/content")).text.splitlines()]


def test_lines_refused_with_429_are_retried_and_answered_once(tmp_path):
    refusals = {"a": 3, "b": 1}

    async def work(client, _):
        batch = await final(client, await create(client, request_line("1", "a") + request_line("2", "b")))
        assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        output = await content_lines(client, batch["output_file_id"])
        assert [(o["custom_id"], o["response"]["body"]["echo"]) for o in output] == [("1", "a"), ("2", "b")]
        assert {o["response"]["body"]["service_class"] for o in output} == {"offline"}

    asyncio.run(with_batches(tmp_path, stand_in_app(refusals, [True]), work))
    assert refusals == {"a": 0, "b": 0}


def test_a_batch_past_its_window_expires(tmp_path):
    async def work(client, batches):
        batches.store.claim_runner = lambda: False  # hold the runner back while the window is moved
        batch_id = await create(client, request_line("1", "a") + request_line("2", "b"))
        batches.store.update_batch(batch_id, expires_at=int(time.time()) - 1)
        del batches.store.claim_runner
        batches.runner.nudge()
        batch = await final(client, batch_id)
        assert batch["status"] == "expired" and batch["expired_at"] is not None
        errors = await content_lines(client, batch["error_file_id"])
        assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("1", "batch_expired"),
                                                                          ("2", "batch_expired")]

    asyncio.run(with_batches(tmp_path, stand_in_app({}, [True]), work))


def test_a_batch_cancelled_before_it_runs_ends_cancelled(tmp_path):
    healthy = [False]

    async def work(client, batches):
        batch_id = await create(client, request_line("1", "a"))
        cancelled = (await client.post(f"/v1/batches/{batch_id}/cancel")).json()
        assert cancelled["status"] == "cancelling"
        batch = await final(client, batch_id)
        assert batch["status"] == "cancelled" and batch["output_file_id"] is None
        assert batch["request_counts"]["completed"] == 0

    asyncio.run(with_batches(tmp_path, stand_in_app({}, healthy), work))


def test_a_deleted_input_file_fails_the_batch(tmp_path):
    async def work(client, batches):
        file_id = (await client.post("/v1/files", files={"file": ("in.jsonl", request_line("1", "a").encode())},
                                     data={"purpose": "batch"})).json()["id"]
        batch = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batches.store.claim_runner = lambda: False  # hold the runner back until the file is gone
        batch_id = (await client.post("/v1/batches", json=batch)).json()["id"]
        assert (await client.delete(f"/v1/files/{file_id}")).json()["deleted"]
        del batches.store.claim_runner
        batches.runner.nudge()
        failed = await final(client, batch_id)
        assert failed["status"] == "failed" and failed["errors"]["data"][0]["code"] == "file_not_found"

    asyncio.run(with_batches(tmp_path, stand_in_app({}, [True]), work))
