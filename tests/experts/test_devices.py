"""Device profiles: the packaged defaults load, the cost model is monotone, bad files say why."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from experts.devices import (
    DeviceConfigError,
    DeviceProfile,
    estimate_cost,
    load_devices,
    parse_devices,
)

GOOD_ENTRY = """
devices:
  - name: box
    tier: edge
    tokens_per_s_at_1b: 100
    prefill_tokens_per_s_at_1b: 1000
    power_w: 20
    memory_gb: 8
    transfer_latency_ms: 10
"""


@pytest.fixture(scope="module")
def devices() -> dict[str, DeviceProfile]:
    return load_devices()


def test_packaged_defaults_cover_every_tier(devices: dict[str, DeviceProfile]) -> None:
    assert {"jetson-agx-orin", "rtx4090-workstation", "h100-server", "local-cpu"} <= set(devices)
    assert {d.tier for d in devices.values()} == {"edge", "server", "local"}
    assert devices["local-cpu"].calibrated_from


def test_local_cpu_matches_the_decode_speeds_measured_here(
    devices: dict[str, DeviceProfile],
) -> None:
    # bench/calibrate_cpu.py, per model: 12.7 / 28.7 / ~41.5 ms a reply token (78.7 / 34.8 / 24 tok/s)
    cpu = devices["local-cpu"]
    for params_b, measured, slack in ((0.135, 78.7, 1.05), (0.5, 34.8, 1.05), (1.5, 24.0, 1.8)):
        predicted = 100 / estimate_cost(cpu, params_b, 0, 100).latency_s  # with the per-token overhead
        assert measured / slack < predicted < measured * 1.05  # never faster than measured


def test_local_cpu_reads_prompts_at_the_rates_measured_here(devices: dict[str, DeviceProfile]) -> None:
    # bench/calibrate_cpu.py prefill_by_model: 205 / 154 / 66-74 prompt tokens/s; the tiny model
    # reads slower than 1/params says, which the per-prompt-token overhead carries
    cpu = devices["local-cpu"]
    for params_b, measured in ((0.135, 205.0), (0.5, 154.0), (1.5, 70.0)):
        assert measured / 1.25 < cpu.prefill_tokens_per_s(params_b) < measured * 1.25
    one = estimate_cost(cpu, 0.135, 1, 0).latency_s - estimate_cost(cpu, 0.135, 0, 0).latency_s
    assert one == pytest.approx(1 / cpu.prefill_tokens_per_s(0.135))  # the cost model reads the same rate


def test_servers_outrun_the_edge_and_the_cpu(devices: dict[str, DeviceProfile]) -> None:
    speed = {n: estimate_cost(d, 7.0, 200, 100).latency_s for n, d in devices.items()}
    assert speed["local-cpu"] > speed["jetson-agx-orin"] > speed["h100-server"]


@pytest.mark.parametrize("name", ["jetson-agx-orin", "rtx4090-workstation", "h100-server",
                                  "local-cpu"])
def test_cost_is_monotone_in_params_and_tokens(
    devices: dict[str, DeviceProfile], name: str
) -> None:
    device = devices[name]
    grid = list(itertools.product([0.1, 0.5, 1.5, 7.0, 70.0], [0, 10, 500], [0, 1, 64, 512]))
    for (p1, i1, o1), (p2, i2, o2) in itertools.product(grid, repeat=2):
        if p1 <= p2 and i1 <= i2 and o1 <= o2:
            a, b = estimate_cost(device, p1, i1, o1), estimate_cost(device, p2, i2, o2)
            assert a.latency_s <= b.latency_s and a.energy_j <= b.energy_j


def test_energy_is_power_times_compute_time() -> None:
    device = parse_devices(GOOD_ENTRY)["box"]
    cost = estimate_cost(device, 2.0, prompt_tokens=500, output_tokens=100)
    compute_s = 500 / (1000 / 2.0) + 100 / (100 / 2.0)
    assert cost.latency_s == pytest.approx(0.010 + compute_s)
    assert cost.energy_j == pytest.approx(20 * compute_s)
    assert device.joules_per_token(2.0) == pytest.approx(20 / 50)


def test_estimate_rejects_nonsense() -> None:
    device = parse_devices(GOOD_ENTRY)["box"]
    with pytest.raises(ValueError, match="params_b"):
        estimate_cost(device, 0.0, 10, 10)
    with pytest.raises(ValueError, match="non-negative"):
        estimate_cost(device, 1.0, -1, 10)


def test_a_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD_ENTRY)
    assert load_devices(path)["box"].memory_gb == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("devices: [", "not valid YAML"),
        ("gpus: []", "top-level 'devices:'"),
        ("devices: [3]", "expected a mapping"),
        (GOOD_ENTRY.replace("    power_w: 20\n", ""), "power_w: Field required"),
        (GOOD_ENTRY.replace("power_w: 20", "power_w: -5"), "power_w: Input should be greater"),
        (GOOD_ENTRY.replace("tier: edge", "tier: cloud"), "tier"),
        (GOOD_ENTRY.replace("memory_gb: 8", "memory_gb: 8\n    colour: red"), "colour"),
        (GOOD_ENTRY + GOOD_ENTRY.split("devices:\n")[1], "defined twice"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError, match=message) as info:
        load_devices(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match="cannot read"):
        load_devices(tmp_path / "nope.yaml")


