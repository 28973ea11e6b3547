"""The shape of a batch the engine's scheduler built, with how its attention splits.

`BatchShape` is a StepShape that also carries two sums a StepShape can only estimate for a mixed batch:
the context of its decoding sequences and the (query, key) pairs its prefill chunks score. Models that
want them read them with `decode_context` and `prefill_pairs`, which fall back to estimates for a plain
StepShape (exact for pure decode and for a single prefill without decodes). `shape_of` is the one
definition used by the profiler that measures steps and the simulator that prices them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetserve.engine.scheduler import SchedulerOutput
from fleetserve.perf.model import StepShape
from fleetserve.perf.roofline import attended_pairs


@dataclass(frozen=True)
class BatchShape(StepShape):
    decode_context_tokens: int = 0  # sum over decoding sequences of the tokens each attends over
    prefill_pairs: float = 0.0  # sum over prefill chunks of chunk * cached + chunk * (chunk + 1) / 2


def shape_of(out: SchedulerOutput) -> BatchShape:
    """A one-token item counts as a decode, as the model runner batches it (a prefill's last lone token
    included), and so does each token of an item that verifies drafts; every other item is a prefill
    chunk."""
    prefill_tokens = decode_seqs = context = prefill_seqs = decode_context = 0
    pairs = 0
    for item in out.scheduled:
        tokens = item.num_tokens
        context += item.start + tokens
        if tokens == 1:
            decode_seqs += 1
            decode_context += item.start + 1
        elif item.drafts:  # a verification: each token is a decode row over the context up to itself
            decode_seqs += tokens
            decode_context += tokens * item.start + tokens * (tokens + 1) // 2
        else:
            prefill_tokens += tokens
            prefill_seqs += 1
            pairs += tokens * item.start + tokens * (tokens + 1) // 2
    return BatchShape(prefill_tokens, decode_seqs, context, prefill_seqs, decode_context, float(pairs))


def mixed_shape(prefill_chunk: int, prefill_cached: int, decode_seqs: int, decode_context: int) -> BatchShape:
    """One prefill chunk (after `prefill_cached` computed tokens) beside `decode_seqs` decodes; a one-token
    chunk is a decode, as in `shape_of`."""
    context = decode_context + prefill_cached + prefill_chunk
    if prefill_chunk == 1:
        return BatchShape(0, decode_seqs + 1, context, 0, context, 0.0)
    pairs = prefill_chunk * prefill_cached + prefill_chunk * (prefill_chunk + 1) // 2
    return BatchShape(prefill_chunk, decode_seqs, context, 1, decode_context, float(pairs))


def decode_context(shape: StepShape) -> float:
    if isinstance(shape, BatchShape):
        return shape.decode_context_tokens
    if shape.prefill_tokens == 0:
        return shape.context_tokens
    seqs = shape.decode_seqs + shape.num_prefill_seqs
    return shape.decode_seqs * ((shape.context_tokens - shape.new_tokens) / seqs + 1)


def prefill_pairs(shape: StepShape) -> float:
    if isinstance(shape, BatchShape):
        return shape.prefill_pairs
    if shape.prefill_tokens == 0:
        return 0.0
    return attended_pairs(shape) - decode_context(shape)
