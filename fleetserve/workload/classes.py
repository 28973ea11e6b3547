"""Service classes and priorities in workloads: tag a whole workload, give a seeded random share of its
requests a priority, and merge workloads (an online trace and an offline batch, say) into one.

Priorities have vLLM's meaning: lower runs first and the default is 0, so a high priority is a negative
number (`HIGH_PRIORITY`, -1, unless told otherwise).

Merging keeps every request's own spec but makes the parts independent of one another: a later part whose
request ids, session ids or prefix ids collide with an earlier part's gets its own (request and session ids
prefixed with the part's label, prefix ids shifted past the earlier ones), so two workloads never share a
conversation or a cached prefix by accident. The first part keeps its ids.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fleetserve.engine.sampling_params import SERVICE_CLASSES
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import arrival_times

HIGH_PRIORITY = -1


def check_priority(priority: object, what: str = "priority") -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"{what} must be a whole number (lower runs first, default 0), got {priority!r}")
    return priority


def check_service_class(service_class: object, what: str = "service class") -> str:
    if service_class not in SERVICE_CLASSES:
        raise ValueError(f"{what} must be one of {list(SERVICE_CLASSES)}, got {service_class!r}")
    return str(service_class)


def tagged(workload: Workload, service_class: str | None = None, priority: int | None = None) -> Workload:
    """Every request of `workload` in `service_class` and/or at `priority` (None leaves that field be)."""
    if service_class is None and priority is None:
        return workload
    classes = check_service_class(service_class) if service_class is not None else None
    priorities = check_priority(priority) if priority is not None else None
    requests = [dataclasses.replace(spec, service_class=classes or spec.service_class,
                                    priority=spec.priority if priorities is None else priorities)
                for spec in workload]
    said = [f"{key}={value}" for key, value in (("service_class", classes), ("priority", priorities))
            if value is not None]
    return workload._derived(requests, f"every request {' '.join(said)}")


def with_priority_fraction(workload: Workload, fraction: float, priority: int = HIGH_PRIORITY, seed: int = 0
                           ) -> Workload:
    """`round(fraction * len(workload))` requests, drawn at random with `seed`, get `priority`."""
    if not 0 <= fraction <= 1 or math.isnan(fraction):
        raise ValueError(f"the fraction of requests to give priority {priority} must be between 0 and 1, "
                         f"got {fraction}")
    check_priority(priority)
    count = round(fraction * len(workload))
    chosen = set(np.random.default_rng(seed).choice(len(workload), size=count, replace=False).tolist())
    requests = [dataclasses.replace(spec, priority=priority) if index in chosen else spec
                for index, spec in enumerate(workload)]
    return workload._derived(requests, f"{count} requests ({fraction:.1%}, seed {seed}) at priority {priority}")


def arriving_at(workload: Workload, rate: float, seed: int = 0) -> Workload:
    """The same requests in the same order as a Poisson process at `rate` requests/s from 0 s; `rate` inf
    sends every one at 0 s, as a batch submitted at once."""
    times = arrival_times(len(workload), rate, "poisson", 1.0, np.random.default_rng(seed))
    requests = [dataclasses.replace(spec, arrival_s=time) for spec, time in zip(workload, times)]
    said = "every request arriving at 0 s" if math.isinf(rate) else f"Poisson arrivals at {rate:g} req/s (seed {seed})"
    return workload._derived(requests, said)


def class_label(workload: Workload) -> str:
    """The workload's one service class, or "mixed"."""
    classes = {spec.service_class for spec in workload}
    return classes.pop() if len(classes) == 1 else "mixed"


def merged(parts: Sequence[Workload], name: str | None = None) -> Workload:
    """One workload with the requests of every part, in order of arrival (ties: earlier parts first)."""
    if not parts:
        raise ValueError("merging needs at least one workload")
    taken_ids: set[str] = set()
    taken_sessions: set[str] = set()
    taken_prefixes: set[int] = set()
    requests: list[RequestSpec] = []
    labels = [class_label(part) for part in parts]
    for index, part in enumerate(parts):
        label = labels[index] if labels.count(labels[index]) == 1 else f"part{index}"
        specs = _made_independent(list(part), label, taken_ids, taken_sessions, taken_prefixes)
        taken_ids.update(spec.request_id for spec in specs)
        taken_sessions.update(spec.session_id for spec in specs if spec.session_id is not None)
        taken_prefixes.update(prefix for spec in specs for prefix in spec.prefix_ids)
        requests += specs
    first = parts[0]
    merged_name = name or " + ".join(f"{part.name} ({labels[index]})" for index, part in enumerate(parts))
    transforms = [*first.transforms, *(
        f"merged with {part.name} ({labels[index]}, {len(part)} requests"
        + (f"; {', '.join(part.transforms)})" if part.transforms else ")")
        for index, part in enumerate(parts) if index > 0)]
    return Workload(requests, merged_name, " + ".join(part.source for part in parts), transforms)


def _made_independent(specs: list[RequestSpec], label: str, taken_ids: set[str], taken_sessions: set[str],
                      taken_prefixes: set[int]) -> list[RequestSpec]:
    rename_ids = any(spec.request_id in taken_ids for spec in specs)
    rename_sessions = any(spec.session_id in taken_sessions for spec in specs if spec.session_id is not None)
    own_prefixes = {prefix for spec in specs for prefix in spec.prefix_ids}
    shift = max(taken_prefixes) - min(own_prefixes) + 1 if own_prefixes & taken_prefixes else 0
    if not (rename_ids or rename_sessions or shift):
        return specs
    independent = []
    for spec in specs:
        session = spec.session_id
        independent.append(dataclasses.replace(
            spec, request_id=f"{label}-{spec.request_id}" if rename_ids else spec.request_id,
            session_id=f"{label}-{session}" if rename_sessions and session is not None else session,
            prefix_ids=[prefix + shift for prefix in spec.prefix_ids]))
    clashing = sorted({spec.request_id for spec in independent} & taken_ids)
    if clashing or len({spec.request_id for spec in independent}) != len(independent):
        raise ValueError(f"cannot give the {label} requests unique ids (e.g. {clashing[:3]}); give the merged "
                         f"workloads distinct request ids")
    return independent
