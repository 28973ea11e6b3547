"""Performance models for the simulator and planner: a hardware catalog and step-time models."""
from fleetserve.perf.hardware import CATALOG, Hardware, get_hardware, parse_fleet_spec
from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.perf.roofline import RooflineModel, StepEstimate

__all__ = [
    "CATALOG",
    "Hardware",
    "PerfModel",
    "RooflineModel",
    "StepEstimate",
    "StepShape",
    "get_hardware",
    "parse_fleet_spec",
]
