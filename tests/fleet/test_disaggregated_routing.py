"""Replica roles and the prefill hand-off in the router: which replica prefills, which decodes, what each is
sent, what is counted, and that every failure of a prefill replica still gives the client its answer.

Fake backends check what crosses the wire in seconds; the slow tests put real replicas behind the router
and compare greedy outputs with plain requests."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from fleetserve.cli import build_parser
from fleetserve.commands.route import main as route_main
from fleetserve.commands.serve_fleet import fleet_plan, fleet_router_config, initial_specs, replica_argv
from fleetserve.fleet.disaggregation import DisaggregationRule

from fleet_helpers import free_port, metric_sum, two_replicas, wait_until

PARAMS_FROM_PREFILL = {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "engine-p",
                       "remote_request_id": "cmpl-p-1", "remote_host": "127.0.0.1", "remote_port": 1}
BODY = {"model": "fake-model", "prompt": "hello there", "max_tokens": 5}
LONG_PROMPT = " ".join(f"Sentence {i} of a long prompt about lighthouses." for i in range(40))


class FakePrefill:
    """An OpenAI-shaped prefill replica without a model. `mode`: "params" answers with kv_transfer_params,
    "plain" without them (an engine without KV transfer), "busy" with 503, "hang" never answers. Records
    request bodies. close() also cuts its open connections, as a killed process would."""

    def __init__(self, mode: str = "params") -> None:
        self.mode = mode
        self.bodies: list[dict] = []
        self.released = threading.Event()
        self.connections: list[socket.socket] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                fake.connections.append(self.connection)

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.startswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(200, {"status": "ok"})

            def do_POST(self) -> None:
                fake.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                if fake.mode == "hang":
                    fake.released.wait(60)
                    return
                if fake.mode == "busy":
                    self._send(503, {"error": {"message": "busy", "type": "service_unavailable"}})
                    return
                answer = {"id": "cmpl-p-1", "object": "text_completion", "model": "fake-model",
                          "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
                if fake.mode == "params":
                    answer["kv_transfer_params"] = PARAMS_FROM_PREFILL
                self._send(200, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.replica_id = self.url.split("//")[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.released.set()


@pytest.fixture
def fake_prefill():
    made: list[FakePrefill] = []

    def make(mode: str = "params") -> FakePrefill:
        made.append(FakePrefill(mode))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def disaggregated(*extra: str) -> list[str]:
    return ["--tokenizer", "none", "--roles", "prefill,decode", *extra]


def fallbacks(router, reason: str | None = None) -> float:
    return sum(value for name, value in router.metrics().items()
               if name.startswith("fleetserve:router_prefill_fallbacks_total")
               and (reason is None or f'reason="{reason}"' in name))


# --- roles and flags ------------------------------------------------------------------------------------------


def test_the_admin_endpoint_registers_a_role_and_refuses_a_bad_one(start_router, fake_backend, fake_prefill):
    router = start_router([], ["--tokenizer", "none"])
    prefill, decode = fake_prefill(), fake_backend(name="decode")
    added = httpx.post(f"{router.url}/admin/replicas", json={"url": prefill.url, "role": "prefill"}, timeout=10)
    assert added.status_code == 201 and added.json()["role"] == "prefill"
    refused = httpx.post(f"{router.url}/admin/replicas", json={"url": decode.url, "role": "decoder"}, timeout=10)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "role" and "unknown replica role 'decoder'" in error["message"]
    assert "'prefill', 'decode'" in error["message"]
    assert httpx.post(f"{router.url}/admin/replicas", json={"url": decode.url}, timeout=10).json()["role"] == "mixed"
    assert {r["role"] for r in router.replicas().values()} == {"prefill", "mixed"}


def test_route_roles_must_name_one_valid_role_per_backend(capsys):
    assert route_main(["--backend", "http://127.0.0.1:1", "--roles", "prefill,decode", "--tokenizer", "none"]) == 2
    assert "--roles names 2 role(s) (prefill,decode) but --backend gives 1 replica(s)" in capsys.readouterr().err
    assert route_main(["--backend", "http://127.0.0.1:1", "--roles", "prefil", "--tokenizer", "none"]) == 2
    assert "--roles: unknown replica role 'prefil'" in capsys.readouterr().err


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_serve_replicas_passes_roles_and_the_rule_to_its_router_only():
    args = serve_args("--replicas", "2", "--port", "9000", "--roles", "prefill,decode", "--disaggregation", "always",
                      "--min-remote-prefill-tokens", "64", "--max-prefill-queue", "3", "--prefill-timeout", "5")
    plan = fleet_plan(args)
    config = fleet_router_config(args, "none")
    assert [replica.port for replica in plan] == [9001, 9002] and config.backends == []  # registered as they start
    assert [spec.role for spec in initial_specs(args, plan)] == ["prefill", "decode"]
    assert config.disaggregation == DisaggregationRule("always", 64, 3) and config.prefill_timeout_s == 5
    argv = replica_argv(args, 9001, 1, 1000)
    assert not {"--roles", "--disaggregation", "--min-remote-prefill-tokens", "--prefill-timeout"} & set(argv)
    with pytest.raises(ValueError, match=r"--roles names 2 role\(s\) \(prefill,decode\) but --replicas 3 gives 3"):
        fleet_plan(serve_args("--replicas", "3", "--roles", "prefill,decode"))
    plain = fleet_router_config(serve_args("--replicas", "2"), "none")
    assert [spec.role for spec in initial_specs(serve_args("--replicas", "2"), plan)] == ["mixed", "mixed"]
    assert plain.disaggregation == DisaggregationRule()


# --- the hand-off, against fakes ------------------------------------------------------------------------------


def test_always_prefills_on_the_prefill_replica_and_decodes_with_its_params(start_router, fake_backend,
                                                                            fake_prefill):
    prefill, decode = fake_prefill(), fake_backend(name="decode")
    router = start_router([prefill.url, decode.url], disaggregated("--disaggregation", "always"))
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{router.url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 200 and b"decode4" in response.content
    assert response.headers["x-fleetserve-replica"] == decode.url.split("//")[1]
    (sent_to_prefill,) = prefill.bodies
    assert sent_to_prefill == {"model": "fake-model", "prompt": "hello there", "max_tokens": 1, "stream": False,
                               "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                                                      "remote_engine_id": None, "remote_block_ids": None,
                                                      "remote_host": None, "remote_port": None}}
    # A stream also asks for its token ids, so that it can go on elsewhere (fleetserve.fleet.stream_migration).
    assert json.loads(decode.bodies[-1]) == {**body, "kv_transfer_params": PARAMS_FROM_PREFILL,
                                             "return_token_ids": True}

    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7}
    assert httpx.post(f"{router.url}/v1/chat/completions", json=chat, timeout=10).json()["choices"][0]["text"] \
        == "decode"
    assert prefill.bodies[-1]["max_completion_tokens"] == 1 and prefill.bodies[-1]["max_tokens"] == 1
    assert json.loads(decode.bodies[-1]) == {**chat, "kv_transfer_params": PARAMS_FROM_PREFILL}

    metrics = router.metrics()
    assert metrics[f'fleetserve:router_remote_prefills_total{{replica="{prefill.replica_id}"}}'] == 2
    assert metric_sum(metrics, "fleetserve:router_prefill_handoff_seconds_count") == 2
    assert fallbacks(router) == 0
    listing = router.replicas()
    assert listing[prefill.replica_id]["in_flight"] == 0 and listing[prefill.replica_id]["role"] == "prefill"


def test_conditional_prefills_remotely_only_long_uncached_prompts(start_router, fake_backend, fake_prefill):
    prefill, decode = fake_prefill(), fake_backend(name="decode")
    router = start_router([prefill.url, decode.url], disaggregated("--min-remote-prefill-tokens", "50"))

    def send(body: dict) -> dict:
        assert httpx.post(f"{router.url}/v1/completions", json=body, timeout=10).status_code == 200
        return json.loads(decode.bodies[-1])

    assert "kv_transfer_params" not in send(BODY) and prefill.bodies == []  # short
    long_body = {**BODY, "prompt": LONG_PROMPT}  # about 500 tokens by the router's estimate
    assert send(long_body)["kv_transfer_params"] == PARAMS_FROM_PREFILL and len(prefill.bodies) == 1
    # The decode replica now holds that prompt: a follow-up that extends it has little left to prefill.
    assert "kv_transfer_params" not in send({**long_body, "prompt": LONG_PROMPT + " More."})
    assert "kv_transfer_params" not in send({**long_body, "prompt": "Other. " + LONG_PROMPT, "n": 2})
    assert len(prefill.bodies) == 1


@pytest.mark.parametrize("failure, reason", [("plain", "no_kv_transfer_params"), ("busy", "http_status"),
                                             ("down", "connect"), ("killed mid-request", "transport")])
def test_a_failed_prefill_leaves_the_prompt_to_the_decode_replica(start_router, fake_backend, fake_prefill,
                                                                  failure, reason):
    prefill = fake_prefill({"plain": "plain", "busy": "busy"}.get(failure, "hang"))
    decode = fake_backend(name="decode")
    # Health checks far apart: the router still takes the prefill replica for healthy when the request comes.
    router = start_router([prefill.url, decode.url],
                          disaggregated("--disaggregation", "always", "--health-interval", "60"))
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    if failure == "down":
        prefill.close()
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=30)))
    sender.start()
    if failure == "killed mid-request":
        wait_until(lambda: prefill.bodies, 10, "the prefill request to arrive")
        prefill.close()
    sender.join(30)
    assert answers and answers[0].status_code == 200 and answers[0].json()["choices"][0]["text"] == "decode"
    assert answers[0].headers["x-fleetserve-replica"] == decode.url.split("//")[1]
    assert json.loads(decode.bodies[-1]) == BODY  # the client's body, unchanged: a local prefill
    assert fallbacks(router, reason) == 1 and fallbacks(router) == 1, router.metrics()
    assert metric_sum(router.metrics(), "fleetserve:router_remote_prefills_total") == 0
    assert router.replicas()[prefill.replica_id]["in_flight"] == 0


def test_a_prefill_that_outlasts_its_time_out_is_dropped(start_router, fake_backend, fake_prefill):
    prefill, decode = fake_prefill("hang"), fake_backend(name="decode")
    router = start_router([prefill.url, decode.url],
                          disaggregated("--disaggregation", "always", "--prefill-timeout", "0.5"))
    response = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=30)
    assert response.status_code == 200 and response.json()["choices"][0]["text"] == "decode"
    assert fallbacks(router, "timeout") == 1


def test_a_fleet_of_prefill_replicas_alone_answers_503_saying_why(start_router, fake_prefill):
    prefill = fake_prefill()
    router = start_router([prefill.url], ["--tokenizer", "none", "--roles", "prefill"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "the replica healthy")
    response = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=10)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert f"serving the model 'fake-model' is a prefill replica ({prefill.replica_id})" in message
    assert "add a decode or mixed replica" in message
    assert prefill.bodies == []


def test_a_fleet_without_roles_never_hands_off(start_router, fake_backend, fake_prefill):
    one, two = fake_prefill(), fake_backend(name="two")
    router = start_router([one.url, two.url], ["--tokenizer", "none", "--disaggregation", "always",
                                                "--policy", "round_robin"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    for _ in range(4):
        assert httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=10).status_code == 200
    assert all("kv_transfer_params" not in body for body in one.bodies) and len(one.bodies) == 2
    assert metric_sum(router.metrics(), "fleetserve:router_remote_prefills_total") == 0


# --- real replicas --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefill_and_decode(tmp_path_factory):
    """Two real replicas of their own: long prompts fill these small caches, which the shared pair's
    cache-sensitive tests must not inherit."""
    yield from two_replicas(tmp_path_factory.mktemp("disaggregated"))


def answer_text(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])
    return response.json()["choices"][0]["text"]


@pytest.mark.slow
def test_greedy_output_through_a_prefill_replica_equals_a_plain_request(prefill_and_decode, start_router):
    prefill, decode = prefill_and_decode
    prefill_id, decode_id = (r.url.split("//")[1] for r in prefill_and_decode)
    router = start_router([prefill.url, decode.url], ["--roles", "prefill,decode", "--disaggregation", "always"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
    served_before = metric_sum(prefill.metrics(), "vllm:request_success_total")
    bodies = [{"prompt": LONG_PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
              {"prompt": LONG_PROMPT + " And then", "max_tokens": 12, "temperature": 0, "stream": True}]
    for body in bodies:
        plain = httpx.post(f"{prefill.url}/v1/completions", json=body, timeout=120)
        routed = httpx.post(f"{router.url}/v1/completions", json=body, timeout=120)
        assert routed.status_code == 200, routed.text
        assert routed.headers["x-fleetserve-replica"] == decode_id
        assert answer_text(routed) == answer_text(plain) != ""
    # Each routed request was prefilled on the prefill replica (besides the plain ones sent there directly).
    assert metric_sum(prefill.metrics(), "vllm:request_success_total") - served_before == 2 * len(bodies)
    metrics = router.metrics()
    handed = metrics.get(f'fleetserve:router_remote_prefills_total{{replica="{prefill_id}"}}', 0.0)
    assert handed == len(bodies) and fallbacks(router) == 0
    # The decode replica decoded from the transferred KV, not from a prompt of its own.
    assert metric_sum(decode.metrics(), "fleetserve:kv_imports_total") == len(bodies)
    assert metric_sum(metrics, "fleetserve:router_decisions_total") == len(bodies)


@pytest.mark.slow
def test_a_killed_prefill_replica_still_gives_a_complete_correct_answer(prefill_and_decode, start_router,
                                                                        fake_prefill):
    decode = prefill_and_decode[1]
    prefill = fake_prefill("hang")
    router = start_router([prefill.url, decode.url], ["--roles", "prefill,decode", "--disaggregation", "always"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
    body = {"prompt": LONG_PROMPT, "max_tokens": 10, "temperature": 0, "stream": True}
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{router.url}/v1/completions", json=body, timeout=120)))
    sender.start()
    wait_until(lambda: prefill.bodies, 10, "the prefill request to arrive")
    prefill.close()
    sender.join(120)
    plain = httpx.post(f"{decode.url}/v1/completions", json=body, timeout=120)
    assert answers and answers[0].status_code == 200
    assert answer_text(answers[0]) == answer_text(plain) != "" and answers[0].text.endswith("data: [DONE]\n\n")
    assert fallbacks(router, "transport") == 1
    down = f"http://127.0.0.1:{free_port()}"
    assert httpx.post(f"{router.url}/admin/replicas", json={"url": down, "role": "prefill"},
                      timeout=10).status_code == 201  # unreachable: never chosen, the decode replica prefills
    assert httpx.post(f"{router.url}/v1/completions", json=body, timeout=120).status_code == 200
