"""The `slo` autoscaling policy: the fewest replicas whose predicted TTFT and TPOT hold the SLO.

For each candidate count n (from the lower bound up), the traffic the fleet sees (requests per second and
their mean prompt and output lengths, over the autoscaler's rate window) is split evenly over n replicas,
and one replica's steady state is priced by the performance model the simulator uses
(fleetserve.perf: `PerfModel.step_time`) under the engine's token budget. The engine's scheduler fills a
step with prompt chunks up to the budget whenever a prompt waits, so a replica alternates between two
kinds of steps:

- full steps, while prompts wait: the budget filled beside the decodes, lasting t_full;
- decode steps, while none waits: the decodes alone, lasting t_decode.

The prefill capacity is C = (budget - decodes) / t_full prompt tokens per second; the arriving prompts
(lambda x P tokens/s) keep the replica in full steps a share rho = lambda x P / C of the time, so
TPOT = 1 / (rho / t_full + (1 - rho) / t_decode), the mean step a decoding request sees. By Little's law a
replica decodes lambda x O x TPOT requests at once (never fewer than the requests it holds now, the queue's
`in_flight` shared over n); decodes and TPOT depend on each other, so they are iterated to a fixed point.
TTFT is a queue for the full steps: a mean prompt takes S = P / C, and waits M/M/1's rho x S / (1 - rho)
(prompt lengths vary about as much as an exponential's), so TTFT = S / (1 - rho). The prompt tokens
queued now (`waiting_prefill_tokens`) count as extra prompt work to clear within the rate window,
shared over n like the traffic. A replica is overloaded (no n
that small holds) when rho >= 1, or its decodes exceed `max_num_seqs` or the KV cache.

TTFT spreads widely around its mean (exponentially, in this queue), so the policy holds the predicted mean
under `headroom` x the TTFT target (`AutoscalerConfig.slo_headroom`). TPOT is itself a mean over a
request's steps, so the predicted TPOT is held under the TPOT target as it is. All replicas are taken to
be one hardware, priced alike, so the fewest replicas are the cheapest; when even the upper bound does not
hold, the policy asks for the upper bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from fleetserve.fleet.snapshot import FleetSnapshot
from fleetserve.perf.model import PerfModel, StepShape

FIXED_POINT_ITERATIONS = 60
FIXED_POINT_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class Traffic:
    """The recent traffic: requests per second and their mean uncached prompt and output lengths."""
    rate: float = 0.0
    prompt_tokens: float = 0.0
    output_tokens: float = 0.0


@dataclass(frozen=True)
class SLOTarget:
    ttft_ms: float | None
    tpot_ms: float | None
    headroom: float  # predicted means must stay under this share of the targets


@dataclass(frozen=True)
class Prediction:
    ttft_s: float  # mean time to first token; inf when the replica cannot keep up
    tpot_s: float  # mean time per output token
    step_s: float
    decode_batch: float  # requests decoding at once, per replica
    prefill_utilization: float  # share of the prefill capacity the arriving prompts use

    @property
    def overloaded(self) -> bool:
        return math.isinf(self.ttft_s)


OVERLOADED = Prediction(math.inf, math.inf, math.inf, math.inf, math.inf)


class SLOPredictor:
    """One replica's mean TTFT and TPOT under a given traffic, from its performance model and token budget."""

    def __init__(self, perf: PerfModel, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        if max_num_batched_tokens < 2 or max_num_seqs < 1:
            raise ValueError(f"need max_num_batched_tokens >= 2 and max_num_seqs >= 1, got {max_num_batched_tokens} "
                             f"and {max_num_seqs}")
        self.perf = perf
        self.budget = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.kv_capacity_tokens = perf.kv_capacity_tokens()

    def predict(self, arrival_rate: float, prompt_tokens: float, output_tokens: float, decoding_now: float = 0.0,
                extra_prompt_tokens_s: float = 0.0) -> Prediction:
        """`arrival_rate` requests/s of `prompt_tokens` (uncached) and `output_tokens` on average reach this
        replica, which holds `decoding_now` requests and must also clear `extra_prompt_tokens_s` of queued
        prompt work per second."""
        rate, prompt, output = max(arrival_rate, 0.0), max(prompt_tokens, 1.0), max(output_tokens, 1.0)
        prompt_work = rate * prompt + max(extra_prompt_tokens_s, 0.0)
        tpot = self._step_time(0, 1, prompt, output)
        decodes = full = decode = utilization = 0.0
        for _ in range(FIXED_POINT_ITERATIONS):
            decodes = max(rate * output * tpot, decoding_now, 1.0)
            room = self.budget - math.ceil(decodes)
            if decodes > self.max_num_seqs or room < 1 or decodes * (prompt + output) > self.kv_capacity_tokens:
                return OVERLOADED
            full = self._step_time(room, decodes, prompt, output)
            decode = self._step_time(0, decodes, prompt, output)
            utilization = prompt_work / (room / full)
            if utilization >= 1:
                return OVERLOADED
            new_tpot = 1 / (utilization / full + (1 - utilization) / decode)
            converged = abs(new_tpot - tpot) < FIXED_POINT_TOLERANCE_S
            tpot = new_tpot
            if converged:
                break
        service = prompt / ((self.budget - math.ceil(decodes)) / full)
        return Prediction(service / (1 - utilization), tpot, full, decodes, utilization)

    def _step_time(self, prefill_tokens: int, decodes: float, prompt: float, output: float) -> float:
        decode_seqs = max(math.ceil(decodes), 1)
        prefill_seqs = min(max(math.ceil(prefill_tokens / prompt), 1), prefill_tokens) if prefill_tokens else 0
        # A decoding request attends to its prompt and, on average, half its answer.
        context = math.ceil(decode_seqs * (prompt + output / 2)) + prefill_tokens
        return self.perf.step_time(StepShape(prefill_tokens, decode_seqs, context, prefill_seqs))


def holds(prediction: Prediction, target: SLOTarget) -> bool:
    if prediction.overloaded:
        return False
    if target.ttft_ms is not None and prediction.ttft_s * 1000 > target.headroom * target.ttft_ms:
        return False
    return target.tpot_ms is None or prediction.tpot_s * 1000 <= target.tpot_ms


def slo_desired(target: SLOTarget, bounds: tuple[int, int], serving: FleetSnapshot, predictor: object | None,
                traffic: Traffic, clear_within_s: float) -> tuple[int, str]:
    """The fewest replicas within `bounds` (min, max) whose prediction holds the SLO, and why; the prompt
    tokens queued now are to be cleared within `clear_within_s`."""
    if not isinstance(predictor, SLOPredictor):
        raise ValueError("the slo autoscaling policy needs an SLOPredictor (fleetserve.fleet.autoscale_slo) built "
                         "from the replicas' performance model: Autoscaler(config, SLOPredictor(perf, ...))")
    replicas = serving.replicas
    lowest, highest = bounds
    decoding_now = sum(r.in_flight for r in replicas)
    backlog = sum(r.waiting_prefill_tokens for r in replicas)
    prediction = OVERLOADED
    for count in range(lowest, highest + 1):
        prediction = predictor.predict(traffic.rate / count, traffic.prompt_tokens, traffic.output_tokens,
                                       decoding_now / count, backlog / clear_within_s / count)
        if holds(prediction, target):
            return count, (f"{traffic.rate:.2f} req/s (prompt {traffic.prompt_tokens:.0f}, output "
                           f"{traffic.output_tokens:.0f} tokens), {decoding_now} in flight: predicted TTFT "
                           f"{prediction.ttft_s * 1000:.0f} ms, TPOT {prediction.tpot_s * 1000:.1f} ms on {count}")
    return highest, (f"{traffic.rate:.2f} req/s, {decoding_now} in flight: the SLO does not hold on {highest} "
                     f"replicas (the upper bound)")
