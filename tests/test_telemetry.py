"""GPU telemetry: the NVML binding's calls (against a stand-in library), the background sampler, and the
busy summary that validation reports and profiles record."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from engine import telemetry
from engine.telemetry import GpuSample, Nvml, NvmlError, TelemetryLog, describe, open_gpu_telemetry, summarize


class FakeNvml:
    """Stands in for libnvidia-ml.so.1: each call writes its out-parameter through the ctypes
    reference, as the C library does, and returns an NVML status code."""

    def __init__(self, old_reasons_name: bool = False, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.uuid: bytes | None = None
        self.fail = fail
        if old_reasons_name:
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons

    def _rc(self, name: str) -> int:
        self.calls.append(name)
        return 999 if name == self.fail else 0

    def nvmlInit_v2(self) -> int:
        return self._rc("nvmlInit_v2")

    def nvmlDeviceGetHandleByUUID(self, key, out) -> int:
        self.uuid = key.value
        return self._rc("nvmlDeviceGetHandleByUUID")

    def nvmlDeviceGetClockInfo(self, dev, kind, out) -> int:
        out._obj.value = {1: 1875, 2: 3201}[kind.value]
        return self._rc("nvmlDeviceGetClockInfo")

    def nvmlDeviceGetPowerUsage(self, dev, out) -> int:
        out._obj.value = 651_500  # milliwatts
        return self._rc("nvmlDeviceGetPowerUsage")

    def nvmlDeviceGetTemperature(self, dev, kind, out) -> int:
        out._obj.value = 58
        return self._rc("nvmlDeviceGetTemperature")

    def _reasons(self, dev, out) -> int:
        out._obj.value = 0x4
        return self._rc("reasons")


def _nvml(monkeypatch, fake: FakeNvml) -> Nvml:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    return Nvml("1a2b-3c")


def test_nvml_reads_clocks_power_and_reasons(monkeypatch) -> None:
    fake = FakeNvml()
    s = _nvml(monkeypatch, fake).read()
    assert fake.uuid == b"GPU-1a2b-3c"  # NVML names devices by "GPU-<uuid>"
    assert (s.sm_mhz, s.mem_mhz, s.power_w, s.temp_c, s.reasons) == (1875, 3201, 651.5, 58, 0x4)
    assert s.power_capped
    # Drivers before CUDA 12 name the reasons call the old way.
    assert _nvml(monkeypatch, FakeNvml(old_reasons_name=True)).read().reasons == 0x4


def test_nvml_errors_name_the_call(monkeypatch) -> None:
    with pytest.raises(NvmlError, match="nvmlDeviceGetHandleByUUID failed with NVML error 999"):
        _nvml(monkeypatch, FakeNvml(fail="nvmlDeviceGetHandleByUUID"))
    monkeypatch.undo()  # the real loader, on a library that is not there
    with pytest.raises(NvmlError, match="cannot load libnvidia-ml-missing.so"):
        Nvml("x", lib="libnvidia-ml-missing.so")


def test_no_telemetry_off_cuda() -> None:
    from engine.device import get_device

    assert open_gpu_telemetry(get_device("cpu")) == (None, None)


def _reader(values: list[tuple[int, int]]):
    """Readings (SM clock, reasons) in turn, then the last one again."""
    it = iter(values)
    last = [values[-1]]

    def read() -> GpuSample:
        sm, reasons = next(it, last[0])
        return GpuSample(time.perf_counter(), sm, 3201, 500.0 + sm / 10, 50, reasons)

    return read


def test_sampler_runs_in_the_background_and_summarizes_busy_samples() -> None:
    readings = [(345, 0x1), (1980, 0x0), (1500, 0x4), (1800, 0x4), (1700, 0x0)]
    t0 = time.perf_counter()
    with TelemetryLog(_reader(readings), period_s=0.01) as log:
        deadline = time.perf_counter() + 5.0
        while len(log.samples) < len(readings) and time.perf_counter() < deadline:
            time.sleep(0.005)
    n = len(log.samples)
    assert n >= len(readings) and log.error is None
    time.sleep(0.03)
    assert len(log.samples) == n  # stopped on exit
    s = summarize(log.samples)
    # the idle-flagged reading (345 MHz between bursts) is left out
    busy = [r for r in readings if not r[1] & 0x1] + [readings[-1]] * (n - len(readings))
    assert s["samples"] == len(busy)
    assert s["sm_clock_mhz_min"] == 1500 and s["sm_clock_mhz_max"] == 1980
    assert s["sm_clock_mhz_mean"] == pytest.approx(sum(r[0] for r in busy) / len(busy))
    assert s["power_capped_share"] == pytest.approx(sum(1 for r in busy if r[1] & 0x4) / len(busy))
    rec = log.record(t0)
    assert rec["summary"] == s and len(rec["samples"]) == n
    assert all(0 <= row[0] < 10 for row in rec["samples"])
    assert rec["samples"][0][1:] == [345, 3201, 534.5, 50, 0x1]
    assert "SM clock mean" in describe(s, "the run") and "at the power cap in" in describe(s, "the run")
    assert summarize([GpuSample(0.0, 345, 3201, 80.0, 38, 0x1)]) is None
    assert describe(None, "the run") == "GPU during the run: no busy samples"


def test_a_failing_reader_stops_sampling_not_the_run() -> None:
    calls = []

    def read() -> GpuSample:
        calls.append(1)
        if len(calls) == 3:
            raise NvmlError("nvmlDeviceGetPowerUsage failed with NVML error 15")
        return GpuSample(time.perf_counter(), 1900, 3201, 600.0, 55, 0)

    with TelemetryLog(read, period_s=0.005) as log:
        deadline = time.perf_counter() + 5.0
        while log.error is None and time.perf_counter() < deadline:
            time.sleep(0.005)
    assert len(log.samples) == 2
    assert log.error == "telemetry stopped after 2 samples: nvmlDeviceGetPowerUsage failed with NVML error 15"
    assert not any(t.name == "gpu-telemetry" for t in threading.enumerate())
    with pytest.raises(ValueError, match="period_s"):
        TelemetryLog(read, period_s=0)
    assert telemetry.REASONS[telemetry.POWER_CAP] == "software power cap"


def test_profile_notes_what_the_card_did_in_each_phase(monkeypatch) -> None:
    """With a reader (here a stand-in: CPU devices have none), the profile's notes give the busy
    summary of its grid's timed rounds and of its serving phase."""
    from engine import profiler
    from engine.testing import single_thread, tiny_engine_config

    monkeypatch.setattr(profiler, "open_gpu_telemetry", lambda device: (_reader([(1900, 0x4)]), None))
    with single_thread():
        prof = profiler.profile_engine(
            tiny_engine_config(),
            profiler.ProfileGrid.quick(),
            repeats=1,
            warmup=1,
            serving_seconds=0.5,
            command="test",
        )
    notes = prof.header.notes
    assert any(n.startswith("serving phase:") for n in notes)
    for what in ("the grid's timed rounds", "the serving phase"):
        assert any(n.startswith(f"GPU during {what}: SM clock mean 1900 MHz") for n in notes), what
