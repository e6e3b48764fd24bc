"""Clock, power and throttle state of an NVIDIA GPU, sampled in the background while the engine runs.

Under load the H200s we validate on sit at their software power cap most of the time, and their SM
clock moves by 1-2% between a profile and a run (README, validation notes). That is the size of the
step-time biases the calibrated model is left with, so every measured run records what the card
did. The readings come from NVML (the driver's management library, `libnvidia-ml.so.1`, present
wherever the driver is) through ctypes: no Python package needed, and nothing on a machine without
an NVIDIA driver, where `open_gpu_telemetry` says why it has nothing.

A `TelemetryLog` samples every `period_s` on a thread of its own. An NVML query costs tens of
microseconds, so at 10 Hz the loop it watches loses nothing measurable. Times are
`time.perf_counter()` seconds, the clock of the engine's step log, so samples line up with steps.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# nvmlClockType_t and the clock-event reason bits of nvml.h (CUDA 12.x)
_CLOCK_SM, _CLOCK_MEM = 1, 2
_TEMPERATURE_GPU = 0
REASONS = {
    0x1: "idle",
    0x2: "application clocks",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal",
    0x40: "hardware thermal",
    0x80: "hardware power brake",
}
POWER_CAP, IDLE = 0x4, 0x1


@dataclass(frozen=True)
class GpuSample:
    t: float  # time.perf_counter() seconds
    sm_mhz: int
    mem_mhz: int
    power_w: float
    temp_c: int
    reasons: int  # bit mask of REASONS

    @property
    def power_capped(self) -> bool:
        return bool(self.reasons & POWER_CAP)


class NvmlError(RuntimeError):
    pass


class Nvml:
    """The few NVML calls we need, for one device, by its UUID (CUDA and NVML number devices
    differently under CUDA_VISIBLE_DEVICES)."""

    def __init__(self, uuid: str, lib: str = "libnvidia-ml.so.1") -> None:
        try:
            self._nv = ctypes.CDLL(lib)
        except OSError as e:
            raise NvmlError(f"cannot load {lib} (no NVIDIA driver here?): {e}") from e
        self._call("nvmlInit_v2")
        self._dev = ctypes.c_void_p()
        key = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        self._call("nvmlDeviceGetHandleByUUID", ctypes.c_char_p(key.encode()), ctypes.byref(self._dev))
        # The reasons call was renamed in CUDA 12 (clocks "event" reasons); older drivers have the old name.
        names = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        self._reasons_fn = next((n for n in names if hasattr(self._nv, n)), None)

    def _call(self, name: str, *args) -> None:
        rc = getattr(self._nv, name)(*args)
        if rc != 0:
            raise NvmlError(f"{name} failed with NVML error {rc}")

    def _uint(self, name: str, *args) -> int:
        v = ctypes.c_uint()
        self._call(name, self._dev, *args, ctypes.byref(v))
        return int(v.value)

    def read(self) -> GpuSample:
        reasons = 0
        if self._reasons_fn:
            r = ctypes.c_ulonglong()
            self._call(self._reasons_fn, self._dev, ctypes.byref(r))
            reasons = int(r.value)
        return GpuSample(
            time.perf_counter(),
            self._uint("nvmlDeviceGetClockInfo", ctypes.c_int(_CLOCK_SM)),
            self._uint("nvmlDeviceGetClockInfo", ctypes.c_int(_CLOCK_MEM)),
            self._uint("nvmlDeviceGetPowerUsage") / 1e3,
            self._uint("nvmlDeviceGetTemperature", ctypes.c_int(_TEMPERATURE_GPU)),
            reasons,
        )


def open_gpu_telemetry(device) -> tuple[Callable[[], GpuSample] | None, str | None]:
    """(reader, note) for an engine device (`engine.device.Device`): a reader of the card's state,
    or None; the note says why a CUDA device has none (no NVML), and is None off CUDA."""
    if getattr(device, "kind", None) != "cuda":
        return None, None
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(device.torch_device).uuid)
        return Nvml(uuid).read, None
    except (NvmlError, AttributeError) as e:
        return None, f"GPU telemetry unavailable: {e}"


class TelemetryLog:
    """Samples `reader` every `period_s` on a background thread between `__enter__` and `__exit__`.
    A failing reader ends the sampling and is reported in `error`; the run it watches goes on."""

    def __init__(self, reader: Callable[[], GpuSample] | None, period_s: float = 0.1) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.reader = reader
        self.period_s = period_s
        self.samples: list[GpuSample] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        assert self.reader is not None
        nxt = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append(self.reader())
            except Exception as e:  # noqa: BLE001 - any reader failure ends sampling, reported below
                self.error = f"telemetry stopped after {len(self.samples)} samples: {e}"
                return
            nxt += self.period_s
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def __enter__(self) -> TelemetryLog:
        if self.reader is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def record(self, t0: float) -> dict:
        """A JSON-ready record: the busy summary, the samples with times from `t0` (perf_counter
        seconds), and the error that stopped the sampling, if any."""
        return {
            "summary": summarize(self.samples),
            "period_s": self.period_s,
            "columns": ["t_s", "sm_mhz", "mem_mhz", "power_w", "temp_c", "reasons"],
            "samples": [
                [round(s.t - t0, 4), s.sm_mhz, s.mem_mhz, s.power_w, s.temp_c, s.reasons]
                for s in self.samples
            ],
            "error": self.error,
        }


def summarize(samples: list[GpuSample]) -> dict | None:
    """Mean, min and max SM clock, mean power, and the share of samples at the power cap, over the
    samples the driver did not flag idle (the engine's loop leaves the card idle between bursts
    of arrivals, at a low clock that says nothing of how it ran the steps); None without any."""
    use = [s for s in samples if not s.reasons & IDLE]
    if not use:
        return None
    sm = np.array([s.sm_mhz for s in use], dtype=float)
    return {
        "samples": len(use),
        "sm_clock_mhz_mean": float(sm.mean()),
        "sm_clock_mhz_min": float(sm.min()),
        "sm_clock_mhz_max": float(sm.max()),
        "power_w_mean": float(np.mean([s.power_w for s in use])),
        "power_capped_share": float(np.mean([s.power_capped for s in use])),
        "temp_c_max": int(max(s.temp_c for s in use)),
    }


def describe(summary: dict | None, what: str) -> str:
    if not summary:
        return f"GPU during {what}: no busy samples"
    return (
        f"GPU during {what}: SM clock mean {summary['sm_clock_mhz_mean']:.0f} MHz (min "
        f"{summary['sm_clock_mhz_min']:.0f}, max {summary['sm_clock_mhz_max']:.0f}), power "
        f"{summary['power_w_mean']:.0f} W mean, at the power cap in "
        f"{100 * summary['power_capped_share']:.0f}% of {summary['samples']} samples, up to "
        f"{summary['temp_c_max']} C"
    )
