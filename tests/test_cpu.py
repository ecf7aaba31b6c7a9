"""The fast CPU path: malloc thresholds (with the fallback where glibc refuses them) and channels-last networks."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from dnd import cpu
from dnd.backends.target_network import TargetNetwork
from tests.helpers import ChannelMixer, to_tensor


class RecordingMallopt:
    """Stands in for glibc's mallopt: records each call, refuses mmap thresholds above ``limit`` like older glibc."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[tuple[int, int]] = []

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param == cpu.M_MMAP_THRESHOLD and value > self.limit else 1


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which nothing has been tuned yet."""
    monkeypatch.setattr(cpu, "_applied", {})
    monkeypatch.delenv(cpu.DISABLE_VARIABLE, raising=False)


def test_thresholds_are_raised_once(fresh, monkeypatch):
    mallopt = RecordingMallopt(limit=2**31)
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: mallopt)

    assert cpu.tune_process() == {"mmap_threshold": cpu.MMAP_THRESHOLD, "trim_threshold": cpu.TRIM_THRESHOLD}
    assert cpu.tune_process() == {"mmap_threshold": cpu.MMAP_THRESHOLD, "trim_threshold": cpu.TRIM_THRESHOLD}
    assert mallopt.calls == [(cpu.M_MMAP_THRESHOLD, cpu.MMAP_THRESHOLD), (cpu.M_TRIM_THRESHOLD, cpu.TRIM_THRESHOLD)]
    assert cpu.tuned()


def test_a_glibc_that_caps_the_threshold_gets_mmap_turned_off_instead(fresh, monkeypatch):
    mallopt = RecordingMallopt(limit=32 << 20)
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: mallopt)

    assert cpu.tune_process() == {"mmap_max": 0, "trim_threshold": cpu.TRIM_THRESHOLD}
    assert (cpu.M_MMAP_MAX, 0) in mallopt.calls


def test_the_environment_or_another_libc_turns_it_off(fresh, monkeypatch):
    mallopt = RecordingMallopt(limit=2**31)
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: mallopt)
    monkeypatch.setenv(cpu.DISABLE_VARIABLE, "0")
    assert cpu.tune_process() == {} and mallopt.calls == [] and not cpu.tuned()

    monkeypatch.delenv(cpu.DISABLE_VARIABLE)
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: None)  # macOS, Windows, musl
    assert cpu.tune_process() == {}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_this_glibc_accepts_the_settings(fresh):
    applied = cpu.tune_process()
    assert applied["trim_threshold"] == cpu.TRIM_THRESHOLD
    assert applied.get("mmap_threshold") == cpu.MMAP_THRESHOLD or applied.get("mmap_max") == 0


def test_convolutional_networks_run_channels_last_on_the_cpu_only():
    conv, linear = ChannelMixer(), nn.Sequential(nn.Linear(3, 2))
    assert cpu.memory_format(conv, torch.device("cpu")) == torch.channels_last
    assert cpu.memory_format(linear, torch.device("cpu")) == torch.contiguous_format
    assert cpu.memory_format(conv, torch.device("cuda")) == torch.contiguous_format


def test_a_channels_last_target_computes_the_same_activations():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    pixels = torch.rand(5, 3, 16, 16)
    expected = module(pixels).detach()
    target = TargetNetwork("convs", module, to_tensor).to("cpu")

    assert target.memory_format == torch.channels_last
    assert module[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(target.forward(pixels), expected, atol=1e-5, rtol=1e-5)
    captured = target.capture(pixels, ["2"])["2"]
    torch.testing.assert_close(captured, expected, atol=1e-5, rtol=1e-5)


def test_the_main_process_leaves_a_core_to_each_worker_while_they_decode(fresh, monkeypatch):
    threads = torch.get_num_threads()
    seen: list[int] = []

    def loader():
        for item in range(3):
            seen.append(torch.get_num_threads())
            yield item

    class Loader:
        def __iter__(self):
            return loader()

        def __len__(self):
            return 3

    untuned = cpu.BesideWorkers(Loader(), workers=1)
    assert list(untuned) == [0, 1, 2] and seen == [threads] * 3 and len(untuned) == 3  # a GPU run: unchanged

    monkeypatch.setattr(cpu, "_applied", {"mmap_threshold": cpu.MMAP_THRESHOLD})
    seen.clear()
    assert list(cpu.BesideWorkers(Loader(), workers=8)) == [0, 1, 2]
    assert seen == [1, 1, 1] and torch.get_num_threads() == threads
    seen.clear()
    assert list(cpu.BesideWorkers(Loader(), workers=0)) == [0, 1, 2] and seen == [threads] * 3
