import dataclasses

import pytest

from fleetserve.perf.hardware import CATALOG, GiB, Hardware, get_hardware, parse_fleet_spec

REQUIRED = ["h100", "h200", "a100", "l40s", "l4", "a10g", "mi300x", "cpu"]


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_entry_is_complete(name):
    hardware = CATALOG[name]
    assert hardware.name == name
    assert hardware.peak_bf16_flops > 0
    assert hardware.memory_bandwidth_bytes_s > 0
    assert hardware.memory_bytes > 0
    assert hardware.price_per_hour_usd > 0
    assert hardware.source.strip()
    assert hardware.kind == ("cpu" if name == "cpu" else "gpu")


def test_catalog_uses_dense_datasheet_figures():
    assert CATALOG["h100"].peak_bf16_flops == pytest.approx(989e12)
    assert CATALOG["h100"].memory_bandwidth_bytes_s == pytest.approx(3.35e12)
    assert CATALOG["h100"].memory_bytes == 80 * GiB
    assert CATALOG["h200"].memory_bandwidth_bytes_s == pytest.approx(4.8e12)
    assert CATALOG["l40s"].peak_bf16_flops == pytest.approx(362e12)  # not the 733 sparse figure
    assert CATALOG["l4"].peak_bf16_flops == pytest.approx(121e12)
    assert CATALOG["mi300x"].memory_bytes == 192 * GiB


def test_cpu_entry_is_a_marked_estimate():
    cpu = CATALOG["cpu"]
    assert cpu.peak_bf16_flops < CATALOG["l4"].peak_bf16_flops / 100
    assert "estimate" in cpu.source
    assert "fleetserve profile" in cpu.source


@pytest.mark.parametrize("alias, expected", [
    ("h100", "h100"), ("H100", "h100"), ("h100-sxm", "h100"), (" H100-SXM ", "h100"),
    ("a100_80gb", "a100"), ("A10", "a10g"), ("MI300X", "mi300x"), ("L40S", "l40s"),
])
def test_get_hardware_accepts_case_and_aliases(alias, expected):
    assert get_hardware(alias) is CATALOG[expected]


def test_unknown_hardware_error_lists_known_names():
    with pytest.raises(ValueError) as error:
        get_hardware("tpu-v5e")
    message = str(error.value)
    assert "tpu-v5e" in message
    for name in REQUIRED:
        assert name in message


def test_parse_fleet_spec():
    fleet = parse_fleet_spec("h100:8,l4:16")
    assert fleet == [(CATALOG["h100"], 8, "mixed"), (CATALOG["l4"], 16, "mixed")]


def test_parse_fleet_spec_tolerates_spaces_case_aliases_and_bare_names():
    fleet = parse_fleet_spec(" H100-SXM : 2 , a10g ")
    assert fleet == [(CATALOG["h100"], 2, "mixed"), (CATALOG["a10g"], 1, "mixed")]


@pytest.mark.parametrize("spec, fragment", [
    ("", "empty fleet spec"),
    ("   ", "empty fleet spec"),
    ("h100:8,,l4:2", "empty entry"),
    ("h100:0", "bad count 0"),
    ("h100:-2", "bad count '-2'"),
    ("h100:two", "bad count 'two'"),
    ("h100:1.5", "bad count '1.5'"),
    ("h100:", "bad count ''"),
    ("v100:4", "unknown hardware 'v100'"),
    ("h100:1,h100-sxm:2", "appears twice"),
])
def test_parse_fleet_spec_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_fleet_spec(spec)


def test_hardware_rejects_bad_figures():
    h100 = CATALOG["h100"]
    with pytest.raises(ValueError, match="memory_bandwidth_bytes_s"):
        dataclasses.replace(h100, memory_bandwidth_bytes_s=0)
    with pytest.raises(ValueError, match="'tpu'"):
        dataclasses.replace(h100, kind="tpu")
    with pytest.raises(ValueError, match="-1"):
        dataclasses.replace(h100, price_per_hour_usd=-1)


def test_hardware_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG["h100"].price_per_hour_usd = 0.0  # type: ignore[misc]
    assert isinstance(CATALOG["h100"], Hardware)
