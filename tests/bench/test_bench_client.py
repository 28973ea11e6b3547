"""The load generator and `bench serve`: request bodies, stream parsing, failure kinds, open-loop timing,
and bad input rejected before any request is sent.

Most tests talk to `FakeServer`, a tiny in-process OpenAI-compatible streaming server, because what they
check cannot be provoked with a real server: exact request bodies, a 500, a stream dropped mid-way, a
chunk that is not JSON, a stall past the timeout, and token timings slow and regular enough to assert
open-loop send times on a busy machine. A connection refused and an unreachable URL use a loopback port
with nothing listening. The replay against a live `fleetserve serve` is in test_bench_live.py.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from fleetserve.bench.client import ClientOptions, ServerUnreachableError, replay
from fleetserve.bench.metrics import parse_slo, summarize
from fleetserve.bench.serve import read_request_log, run
from fleetserve.commands.bench_arguments import add_bench_serve_arguments
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.traces import TraceError

DATA = Path(__file__).parent.parent / "data"
AZURE = DATA / "azure_llm_2023_conv_head300.csv"


class FakeServer:
    """Serves GET /v1/models and streams `max_tokens` chunks for POSTs, misbehaving as `behaviour` says:
    "ok", "status_500", "drop" (closes after 2 chunks), "garbage" (a chunk that is not JSON), "stall"."""

    def __init__(self, behaviour: str = "ok", first_token_delay_s: float = 0.0, token_delay_s: float = 0.002,
                 usage: bool = True) -> None:
        self.behaviour, self.usage = behaviour, usage
        self.first_token_delay_s, self.token_delay_s = first_token_delay_s, token_delay_s
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def posts(self) -> list[dict[str, Any]]:
        return [body for method, _, body in self.requests if method == "POST" and body is not None]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                body = json.loads(raw) if raw else None
                self.requests.append((method, path, body))
                if not await self._respond(method, path, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _respond(self, method: str, path: str, body: Any, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must close."""
        if method == "GET" and path == "/v1/models":
            payload = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            return True
        if self.behaviour == "status_500":
            payload = b'{"error": {"message": "engine exploded"}}'
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        chat = path.endswith("/chat/completions")

        async def send(data: str) -> None:
            event = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()

        if self.behaviour == "stall":
            await asyncio.sleep(30)
            return False
        await asyncio.sleep(self.first_token_delay_s)
        if chat:
            await send(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        count = body["max_tokens"]
        for index in range(count):
            if self.behaviour == "drop" and index == 2:
                return False
            if self.behaviour == "garbage" and index == 1:
                await send("{not json")
            finish = "length" if index == count - 1 else None
            choice = ({"index": 0, "delta": {"content": "w "}, "finish_reason": finish} if chat
                      else {"index": 0, "text": "w ", "finish_reason": finish})
            await send(json.dumps({"choices": [choice]}))
            await asyncio.sleep(self.token_delay_s)
        if self.usage:
            prompt = body.get("prompt") or body.get("messages")
            await send(json.dumps({"choices": [], "usage": {"prompt_tokens": len(prompt) + 100,
                                                            "completion_tokens": count}}))
        await send("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def workload(arrivals: list[float], output_tokens: int = 4) -> Workload:
    specs = [RequestSpec(f"r{index}", arrival, 3, output_tokens, prompt="a b c", prompt_token_ids=[7, 8, 9])
             for index, arrival in enumerate(arrivals)]
    return Workload(specs, "test", "hand-made")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replay_now(url: str, load: Workload, **options: Any) -> list:
    return asyncio.run(replay(url, load, ClientOptions(**options)))


# --- requests and streams -------------------------------------------------------------------------

def test_streams_token_ids_with_vllm_style_body_and_counts_usage() -> None:
    with FakeServer() as server:
        records = replay_now(server.url, workload([0.0, 0.01, 0.02], output_tokens=5))
    assert ("GET", "/v1/models", None) in server.requests
    assert len(server.posts) == 3
    body = server.posts[0]
    assert body == {"model": "fake-model", "prompt": [7, 8, 9], "max_tokens": 5, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    for record in records:
        assert record.success, record.error
        assert record.output_tokens == 5 and len(record.token_times_s) == 5
        assert record.prompt_tokens == 103  # from the usage block, not the spec
        assert record.sent_s <= record.first_token_s == record.token_times_s[0] <= record.end_s


def test_chat_endpoint_sends_text_omits_ignore_eos_and_skips_role_chunks() -> None:
    with FakeServer() as server:
        records = replay_now(server.url, workload([0.0]), endpoint="chat", ignore_eos=False, model="m")
    assert [path for method, path, _ in server.requests if method == "POST"] == ["/v1/chat/completions"]
    body = server.posts[0]
    assert body["messages"] == [{"role": "user", "content": "a b c"}] and body["model"] == "m"
    assert "ignore_eos" not in body
    assert len(records[0].token_times_s) == 4 and records[0].output_tokens == 4


def test_without_usage_block_output_tokens_are_content_chunks() -> None:
    with FakeServer(usage=False) as server:
        record, = replay_now(server.url, workload([0.0], output_tokens=6))
    assert record.success and record.output_tokens == 6 and record.prompt_tokens == 3


@pytest.mark.parametrize("behaviour, kind, text", [
    ("status_500", "http_status_500", "engine exploded"),
    ("drop", "stream_error", "RemoteProtocolError"),
    ("garbage", "stream_error", "not JSON"),
])
def test_server_failures_are_recorded_with_their_kind(behaviour: str, kind: str, text: str) -> None:
    with FakeServer(behaviour) as server:
        records = replay_now(server.url, workload([0.0, 0.0]))
    assert len(records) == 2
    for record in records:
        assert not record.success and record.error_kind == kind and text in record.error
        assert record.end_s is not None
    summary = summarize(records)
    assert summary["failed"] == 2 and summary["failures_by_kind"] == {kind: 2}


def test_stalled_stream_times_out() -> None:
    with FakeServer("stall") as server:
        record, = replay_now(server.url, workload([0.0]), timeout_s=0.3)
    assert record.error_kind == "timeout" and "0.3 s" in record.error
    assert 0.25 <= record.end_s - record.sent_s < 5


def test_refused_connection_is_a_connection_failure() -> None:
    records = replay_now(f"http://127.0.0.1:{free_port()}", workload([0.0, 0.0]), model="m")
    assert [record.error_kind for record in records] == ["connection", "connection"]


# --- open loop ----------------------------------------------------------------------------------

def test_arrivals_do_not_wait_for_slow_answers_but_a_concurrency_cap_shows_as_send_lag() -> None:
    arrivals = [0.0, 0.1, 0.2, 0.3]
    with FakeServer(first_token_delay_s=0.6) as server:
        open_loop = replay_now(server.url, workload(arrivals, output_tokens=2))
        capped = replay_now(server.url, workload(arrivals, output_tokens=2), max_concurrency=1)
    assert all(record.success for record in open_loop + capped)
    assert max(record.sent_s - record.arrival_s for record in open_loop) < 0.15  # loose: a busy machine
    lags = sorted(record.sent_s - record.arrival_s for record in capped)
    assert lags[-1] > 1.0  # the fourth waited for three answers of >= 0.6 s each
    assert summarize(capped)["send_lag_ms"]["max"] > 1000


def test_duration_stops_issuing_new_requests() -> None:
    with FakeServer() as server:
        records = replay_now(server.url, workload([0.0, 0.05, 0.8, 1.5]), stop_after_s=0.4)
    assert [record.request_id for record in records] == ["r0", "r1"]
    assert len(server.posts) == 2
    with FakeServer(first_token_delay_s=0.5) as server:
        records = replay_now(server.url, workload([0.0, 0.0, 0.0]), stop_after_s=0.3, max_concurrency=1)
    assert [record.request_id for record in records] == ["r0"]  # the others still waited at 0.3 s


# --- bench serve: inputs checked before any load -------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleetserve bench serve")
    add_bench_serve_arguments(parser)
    return parser.parse_args([*argv, "--no-progress"])


def test_missing_trace_file_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with FakeServer() as server:
        with pytest.raises(TraceError, match="nope.csv"):
            run(parse(["--url", server.url, "--trace", str(missing)]))
    assert server.requests == []


def test_csv_with_unknown_columns_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    trace = tmp_path / "odd.csv"
    trace.write_text("when,how_long\n1,2\n")
    with FakeServer() as server:
        with pytest.raises(TraceError, match=r"\['when', 'how_long'\]"):
            run(parse(["--url", server.url, "--trace", str(trace)]))
    assert server.requests == []


def test_unreachable_url_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachableError, match=f"cannot reach the server at {url}"):
        run(parse(["--url", url, "--trace", str(AZURE), "--num-requests", "2"]))


@pytest.mark.parametrize("flag, value, named", [
    ("--slo", "ttft=fast", "'fast' is not a number"),
    ("--slo", "latency=5", "unknown key 'latency'"),
])
def test_bad_slo_is_named_and_nothing_is_sent(flag: str, value: str, named: str) -> None:
    with FakeServer() as server:
        with pytest.raises(ValueError, match=named):
            run(parse(["--url", server.url, "--trace", str(AZURE), flag, value]))
    assert server.requests == []


def test_bad_synthetic_spec_is_named_and_nothing_is_sent() -> None:
    with FakeServer() as server:
        with pytest.raises(ValueError, match="unknown key 'speed'"):
            run(parse(["--url", server.url, "--synthetic", "speed=4,n=10"]))
    assert server.requests == []


@pytest.mark.parametrize("argv", [["--speedup", "2", "--rate", "3"], ["--speedup", "-1"],
                                  ["--max-concurrency", "0"], []])
def test_contradictory_or_nonpositive_flags_are_usage_errors(argv: list[str]) -> None:
    source = ["--trace", str(AZURE)] if argv else []
    with pytest.raises(SystemExit) as exit_info:
        parse(["--url", "http://127.0.0.1:1", *source, *argv])
    assert exit_info.value.code == 2


# --- bench serve end to end against the fake -----------------------------------------------------

def test_bench_serve_writes_result_request_log_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--synthetic", "rate=50,n=6,prompt=fixed:12,output=uniform:2:5", "--slo", "ttft=1000,e2e=5000",
            "--json", str(out / "run.json"), "--requests-out", str(out / "requests.jsonl"),
            "--plot", str(out / "plots"), "--label", "fake"]
    with FakeServer() as server:
        assert run(parse(["--url", server.url + "/v1/", *argv])) == 0
    result = json.loads((out / "run.json").read_text())
    assert result["completed"] == 6 and result["not_sent"] == 0 and result["slo_attainment"] == 1.0
    assert result["config"]["label"] == "fake" and result["config"]["model"] == "fake-model"
    assert any("prompts synthesized" in step for step in result["config"]["transforms"])
    assert result["workload"]["num_requests"] == 6 and "send_lag_ms" in result
    prompts = [body["prompt"] for body in server.posts]
    assert sorted(len(prompt) for prompt in prompts) == [12] * 6  # token ids, exactly the intended length
    records = read_request_log(out / "requests.jsonl")
    recomputed = summarize(records, None, parse_slo("ttft=1000,e2e=5000"))
    assert {key: result[key] for key in recomputed} == recomputed
    spec = json.loads((out / "requests.jsonl").read_text().splitlines()[0])["spec"]
    assert spec["prompt_tokens"] == 12 and "prompt_token_ids" not in spec
    assert sorted(path.name for path in (out / "plots").iterdir()) == ["latency_cdf.png", "timeline.png"]
