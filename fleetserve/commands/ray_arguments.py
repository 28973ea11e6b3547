"""The Ray flags of `serve` (a fleet across machines: fleetserve.fleet.ray_replicas), and the replicas a
fleet spec or a plan file asks for."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fleetserve.fleet.ray_replicas import RayPlacement
from fleetserve.fleet.scaling_loop import ReplicaSpec
from fleetserve.perf.hardware import parse_fleet_spec


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RayPlacement()
    group = parser.add_argument_group("Ray (replicas as actors on a Ray cluster, behind the router)")
    group.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="place the replicas on the Ray cluster at ADDRESS (the head's HOST:PORT, or 'auto'); "
                            "with no ADDRESS, start a local Ray instance. Needs `pip install 'fleetserve[ray]'`")
    group.add_argument("--fleet", default=None, metavar="SPEC",
                       help="with --ray: the replicas per hardware pool, as `fleetserve sim --fleet` takes them "
                            "(a100:2,l4:4, roles as a100:1:prefill); each replica asks Ray for one unit of the "
                            "custom resource named after its hardware, so start nodes with "
                            "`ray start --resources '{\"a100\": 8}'` (default: the `fleet` of the --plan file, "
                            "else --replicas replicas with no pool)")
    group.add_argument("--ray-cpus-per-replica", type=float, default=defaults.cpus,
                       help="the CPUs each replica's actor asks of Ray (its engine uses that many threads)")
    group.add_argument("--ray-gpus-per-replica", type=float, default=defaults.gpus,
                       help="the GPUs each replica's actor asks of Ray")


def ray_placement(args: argparse.Namespace) -> RayPlacement:
    if not args.ray_cpus_per_replica > 0 or args.ray_gpus_per_replica < 0:
        raise ValueError(f"--ray-cpus-per-replica must be positive and --ray-gpus-per-replica not negative, got "
                         f"{args.ray_cpus_per_replica} and {args.ray_gpus_per_replica}")
    return RayPlacement(args.ray_cpus_per_replica, args.ray_gpus_per_replica)


def fleet_spec_of(args: argparse.Namespace) -> str | None:
    """The fleet to place: --fleet, else the plan file's final fleet, else none (plain --replicas)."""
    if args.fleet is not None:
        return args.fleet
    if args.plan is None:
        return None
    try:
        fleet = json.loads(Path(args.plan).read_text(encoding="utf-8")).get("fleet")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"cannot read the fleet of the plan {args.plan}: {error}") from None
    if not isinstance(fleet, str):
        raise ValueError(f"the plan {args.plan} names no fleet; give --fleet, or a `fleetserve plan --json` file")
    return fleet


def ray_replica_specs(args: argparse.Namespace) -> list[ReplicaSpec] | None:
    """One spec per replica of the fleet to place (pool and role), or None to start --replicas plain ones."""
    if args.ray is None:
        if args.fleet is not None:
            raise ValueError("--fleet places replicas on a Ray cluster; add --ray (or use --replicas N on this "
                             "machine)")
        return None
    spec = fleet_spec_of(args)
    if spec is None:
        return None
    specs = [ReplicaSpec(entry.hardware.name, entry.role)
             for entry in parse_fleet_spec(spec) for _ in range(entry.devices)]
    if args.replicas not in (1, len(specs)):
        raise ValueError(f"--replicas {args.replicas} disagrees with the fleet {spec!r} ({len(specs)} replicas); "
                         f"drop --replicas")
    if args.roles is not None:
        raise ValueError(f"the fleet {spec!r} gives the replicas' roles; drop --roles")
    return specs
