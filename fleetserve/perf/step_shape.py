"""The StepShape of a batch the engine's scheduler built: one definition for the profiler that measures
steps and the simulator that prices them, so both classify the same work the same way."""
from __future__ import annotations

from fleetserve.engine.scheduler import SchedulerOutput
from fleetserve.perf.model import StepShape


def shape_of(out: SchedulerOutput) -> StepShape:
    """A one-token item counts as a decode, as the model runner batches it (a prefill's last lone token
    included); every longer item is a prefill chunk."""
    prefill_tokens = decode_seqs = context = prefill_seqs = 0
    for item in out.scheduled:
        tokens = item.num_tokens
        context += item.start + tokens
        if tokens == 1:
            decode_seqs += 1
        else:
            prefill_tokens += tokens
            prefill_seqs += 1
    return StepShape(prefill_tokens, decode_seqs, context, prefill_seqs)
