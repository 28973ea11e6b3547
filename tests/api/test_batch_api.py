"""The OpenAI Batch API with the real `openai` client against a real server (its own SQLite file): the
round trip, per-line errors, validation failures, bad requests, cancel, listing; and the offline class
every batch line runs as."""
from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI, Request

from fleetserve.api.batch_execution import in_process_client, run_line
from fleetserve.model.loader import DEFAULT_MODEL as MODEL

SERVER_EXTRA_ARGS = ["--batch-db", str(Path(tempfile.mkdtemp(prefix="fleetserve-batch-test-")) / "batches.sqlite3"),
                     "--batch-concurrency", "4"]
FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, question: str, max_tokens: int = 4, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                     "temperature": 0, **body}}


def jsonl(lines: list) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload(client: openai.OpenAI, content: bytes, name: str = "batch.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch").id


def run_batch(client: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions", timeout_s: float = 120,
              **create):
    batch = client.batches.create(input_file_id=upload(client, content), endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h", **create)
    return wait_final(client, batch.id, timeout_s)


def wait_final(client: openai.OpenAI, batch_id: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout_s}s: {batch}"
        time.sleep(0.2)


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_round_trip(client):
    questions = {"q1": "What is the capital of France?", "q2": "Name a prime number.", "q3": "Say hello."}
    batch = run_batch(client, jsonl([chat_line(cid, q) for cid, q in questions.items()]),
                      metadata={"purpose": "test"})
    assert batch.status == "completed", batch
    assert batch.object == "batch" and batch.endpoint == "/v1/chat/completions"
    assert batch.metadata == {"purpose": "test"} and batch.errors is None and batch.error_file_id is None
    assert batch.request_counts.total == 3 and batch.request_counts.completed == 3
    assert batch.request_counts.failed == 0
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.expires_at == batch.created_at + 24 * 3600
    output = file_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == list(questions)
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["usage"]["completion_tokens"] <= 4
        assert response["body"]["choices"][0]["message"]["content"]
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes > 0
    assert batch.id in [b.id for b in client.batches.list(limit=100)]


def test_round_trip_matches_the_live_endpoint(client):
    line = chat_line("same", "Write one word about the sea.", max_tokens=6)
    live = client.chat.completions.create(**line["body"])
    batch = run_batch(client, jsonl([line]))
    [answer] = file_lines(client, batch.output_file_id)
    assert answer["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content


def test_completions_endpoint(client):
    line = {"custom_id": "c1", "method": "POST", "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": "The sky is", "max_tokens": 3, "temperature": 0}}
    batch = run_batch(client, jsonl([line]), endpoint="/v1/completions")
    [answer] = file_lines(client, batch.output_file_id)
    assert batch.status == "completed"
    assert answer["response"]["body"]["object"] == "text_completion"


def test_bad_lines_are_answered_in_the_error_file_and_the_rest_completes(client):
    lines = [chat_line("good-1", "Say yes."),
             "{this is not json",
             chat_line("bad-body", "Say no.", temperature="hot"),
             {**chat_line("bad-url", "Say maybe."), "url": "/v1/embeddings"},
             {"method": "POST", "url": "/v1/chat/completions", "body": {}},
             chat_line("good-2", "Say ok.")]
    batch = run_batch(client, jsonl(lines))
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 2, 4)
    assert [line["custom_id"] for line in file_lines(client, batch.output_file_id)] == ["good-1", "good-2"]
    errors = {line["custom_id"] or line["error"]["code"]: line for line in file_lines(client, batch.error_file_id)}
    assert set(errors) == {"invalid_json_line", "bad-body", "bad-url", "missing_required_parameter"}
    not_json = errors["invalid_json_line"]
    assert not_json["response"] is None and "line 2" in not_json["error"]["message"]
    rejected = errors["bad-body"]
    assert rejected["response"]["status_code"] == 400
    assert rejected["response"]["body"]["error"]["param"] == "temperature"
    assert "temperature" in rejected["error"]["message"]
    assert errors["bad-url"]["error"]["code"] == "invalid_url"


@pytest.mark.parametrize("content, code", [
    (b"hello world\nthis is not json\n", "invalid_file_format"),
    (b"\n\n", "empty_file"),
    (b"\xff\xfe\x00binary", "invalid_file_format"),
])
def test_a_file_that_is_not_jsonl_fails_the_batch(client, content, code):
    batch = run_batch(client, content)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors.data[0].code == code and batch.errors.data[0].message
    assert batch.output_file_id is None and batch.request_counts.total == 0


def test_an_unknown_model_fails_the_batch(client):
    batch = run_batch(client, jsonl([chat_line("ok", "Hi."), chat_line("x", "Hi.", model="no-such-model")]))
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert error.code == "model_not_found" and error.line == 2 and "no-such-model" in error.message


def test_a_repeated_custom_id_fails_the_batch(client):
    batch = run_batch(client, jsonl([chat_line("twice", "Hi."), chat_line("twice", "Hello.")]))
    assert batch.status == "failed" and batch.errors.data[0].code == "duplicate_custom_id"


def test_bad_requests_are_refused_at_creation(client):
    file_id = upload(client, jsonl([chat_line("a", "Hi.")]))
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-missing")


def test_files_list_retrieve_delete(client):
    file_id = upload(client, b'{"x": 1}\n', name="mine.jsonl")
    found = client.files.retrieve(file_id)
    assert (found.filename, found.purpose, found.bytes, found.object) == ("mine.jsonl", "batch", 9, "file")
    assert client.files.content(file_id).content == b'{"x": 1}\n'
    assert file_id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_list_pages_newest_first(client):
    file_id = upload(client, jsonl([chat_line("a", "Hi.", max_tokens=1)]))
    ids = [client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
           for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=ids[1])
    assert second.data[0].id == ids[0]
    for batch_id in ids:
        wait_final(client, batch_id)


def test_cancel_stops_the_batch_with_partial_output(client):
    lines = [chat_line(f"r{i}", f"Count from {i} to {i + 20}.", max_tokens=24) for i in range(40)]
    file_id = upload(client, jsonl(lines))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    final = wait_final(client, batch.id)
    assert final.status == "cancelled" and final.cancelled_at is not None
    answered = [line["custom_id"] for line in file_lines(client, final.output_file_id)]
    assert 1 <= len(answered) == final.request_counts.completed < 40
    assert len(set(answered)) == len(answered)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_every_line_runs_as_the_offline_class():
    seen: list[tuple[str | None, dict]] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def record(request: Request) -> dict:
        seen.append((request.headers.get("x-service-class"), await request.json()))
        return {"object": "chat.completion"}

    async def run_two() -> None:
        async with in_process_client(app) as client:
            for body in ({"messages": []}, {"messages": [], "service_class": "online"}):
                outcome, line = await run_line(client, "id", {"url": "/v1/chat/completions", "body": body})
                assert outcome == "output" and line["response"]["status_code"] == 200

    asyncio.run(run_two())
    assert [header for header, _ in seen] == ["offline", "offline"]
    assert seen[1][1]["service_class"] == "offline"


def test_upload_needs_multipart(server):
    response = httpx.post(f"{server.api_url}/files", json={"purpose": "batch"}, timeout=10)
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
