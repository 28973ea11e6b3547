"""End times of a run of pure decode steps.

Step i of the run (0-based) decodes `decode_seqs` sequences over `first_context_tokens + i * decode_seqs`
context tokens. A performance model may answer this itself with `decode_step_durations`; the roofline
model is evaluated here term by term as `RooflineModel.estimate` computes it, without building a StepShape
per step (a test holds the two equal); any other model is asked one step at a time.
"""
from __future__ import annotations

from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.perf.roofline import RooflineModel


def decode_step_ends(perf: PerfModel, start: float, decode_seqs: int, first_context_tokens: int,
                     num_steps: int) -> list[float]:
    """Each step's end, summed left to right from `start` as a loop of `now += step_time` would."""
    durations = decode_step_durations(perf, decode_seqs, first_context_tokens, num_steps)
    ends = []
    now = start
    for duration in durations:
        now += duration
        ends.append(now)
    return ends


def decode_step_durations(perf: PerfModel, decode_seqs: int, first_context_tokens: int,
                          num_steps: int) -> list[float]:
    own = getattr(perf, "decode_step_durations", None)
    if own is not None:
        return list(own(decode_seqs, first_context_tokens, num_steps))
    if isinstance(perf, RooflineModel):
        return _roofline_decode(perf, decode_seqs, first_context_tokens, num_steps)
    return [perf.step_time(StepShape(0, decode_seqs, first_context_tokens + i * decode_seqs))
            for i in range(num_steps)]


def _roofline_decode(model: RooflineModel, n: int, first_context: int, num_steps: int) -> list[float]:
    # RooflineModel.estimate for StepShape(0, n, context): n new tokens and n sampled sequences; attended
    # pairs as roofline.attended_pairs computes them, the same float operations in the same order.
    fixed_flops = 2 * model.body_params * n + 2 * model.lm_head_params * n
    per_pair = model.attention_flops_per_pair
    flops_per_s = model.hardware.peak_bf16_flops * model.compute_efficiency
    bytes_per_s = model.hardware.memory_bandwidth_bytes_s * model.bandwidth_efficiency
    weights, per_token, overhead = model.weight_bytes_read_per_step, model.kv_bytes_per_token, model.step_overhead_s
    # Bound methods and constants hoisted: this loop prices every skipped decode step of a run.
    total_flops_per_s = flops_per_s
    durations: list[float] = []
    append = durations.append
    context = first_context
    for _ in range(num_steps):
        attended = n * ((context - n) / n + 1) + 0.0
        compute_s = (fixed_flops + per_pair * attended) / total_flops_per_s
        memory_s = (weights + per_token * (context + n)) / bytes_per_s
        append((compute_s if compute_s > memory_s else memory_s) + overhead)
        context += n
    return durations
