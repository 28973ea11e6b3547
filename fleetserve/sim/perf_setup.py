"""The model being served and each fleet hardware's performance model, from the `sim` flags.

`--perf` may be given several times: "roofline" (the roofline model for any hardware without a profile)
and profile JSONs from `fleetserve profile`, each used for the hardware it was measured on. A hardware of
the fleet with neither is an error, as is a profile of another model than the one simulated.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import Hardware
from fleetserve.perf.model import PerfModel
from fleetserve.perf.profiled import ProfiledModel
from fleetserve.perf.roofline import RooflineModel

ROOFLINE = "roofline"
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim")


def load_profiles(perf_specs: list[str]) -> dict[str, ProfiledModel]:
    profiles: dict[str, ProfiledModel] = {}
    for spec in perf_specs:
        if spec == ROOFLINE:
            continue
        profile = ProfiledModel.load(spec)
        if profile.hardware in profiles:
            raise ValueError(f"two profiles for hardware {profile.hardware!r}: {profiles[profile.hardware].source} "
                             f"and {spec}")
        profiles[profile.hardware] = profile
    return profiles


def load_model_config(model: str | None, model_config: str | None,
                      profiles: dict[str, ProfiledModel] | None = None) -> tuple[ModelConfig, str]:
    """(architecture, name): from --model-config, else --model, else the profiles' model, else the default."""
    if model is not None and model_config is not None:
        raise ValueError(f"give --model ({model!r}) or --model-config ({model_config!r}), not both")
    if model_config is not None:
        path = Path(model_config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"--model-config {model_config!r}: no such file (want a Hugging Face config.json)")
        return ModelConfig.from_file(path), path.parent.name
    if model is None:
        for profile in (profiles or {}).values():
            measured = profile.measured_on.get("model_config")
            if measured:
                return ModelConfig(**measured), str(profile.measured_on.get("model", "profiled model"))
    from fleetserve.model.loader import DEFAULT_MODEL, gguf_file, resolve_model
    name = model or DEFAULT_MODEL
    gguf = gguf_file(model)
    if gguf is not None:  # read from the file's metadata: converting it would load torch and transformers
        from fleetserve.model.gguf_config import model_config_from_gguf
        return model_config_from_gguf(gguf), name
    return ModelConfig.from_file(resolve_model(model) / "config.json"), name


def perf_models(fleet: Sequence[tuple[Hardware, int] | tuple[Hardware, int, str]], perf_specs: list[str],
                model_config: ModelConfig, profiles: dict[str, ProfiledModel] | None = None) -> dict[str, PerfModel]:
    """One performance model per hardware of the fleet."""
    specs = perf_specs or [ROOFLINE]
    profiles = profiles if profiles is not None else load_profiles(specs)
    hardware_of_fleet = list({entry[0].name: entry[0] for entry in fleet}.values())
    fleet_names = [hardware.name for hardware in hardware_of_fleet]
    unused = sorted(set(profiles) - set(fleet_names))
    if unused:
        raise ValueError(f"profiles were measured on {unused} ({', '.join(str(profiles[h].source) for h in unused)}) "
                         f"but the fleet has only {fleet_names}")
    models: dict[str, PerfModel] = {}
    for hardware in hardware_of_fleet:
        if hardware.name in profiles:
            check_profile_model(profiles[hardware.name], model_config)
            models[hardware.name] = profiles[hardware.name]
        elif ROOFLINE in specs:
            models[hardware.name] = RooflineModel(model_config, hardware)
        else:
            raise ValueError(f"no performance model for {hardware.name!r}: the profiles given were measured on "
                             f"{sorted(profiles)}; profile it or add --perf roofline")
    return models


def check_profile_model(profile: ProfiledModel, model_config: ModelConfig) -> None:
    measured = profile.measured_on.get("model_config")
    if not measured:
        return
    differing = {name: (measured.get(name), getattr(model_config, name)) for name in ARCHITECTURE_FIELDS
                 if measured.get(name) != getattr(model_config, name)}
    if differing:
        differences = ", ".join(f"{name} {measured_value} != {simulated}"
                                for name, (measured_value, simulated) in differing.items())
        raise ValueError(f"profile {profile.source} was measured with another model "
                         f"({profile.measured_on.get('model')}): {differences}")
