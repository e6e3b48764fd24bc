"""Device adapters: what the engine needs to know of CUDA, CPU and Ascend NPU in one place.

The model and runner only call `torch` on a `torch.device`; what differs per accelerator is
how much memory is free, whether Triton kernels and CUDA graphs exist there, how to wait for
queued work, and which dtype is sensible by default. Ascend support comes from the optional
`torch_npu` plug-in, imported lazily so it is never a dependency.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "cpu" | "npu"
    torch_device: torch.device
    supports_triton: bool
    supports_graphs: bool
    default_dtype: torch.dtype

    @property
    def name(self) -> str:
        """Human-readable accelerator name (e.g. 'NVIDIA H100 80GB HBM3'), for result files."""
        if self.kind == "cuda":
            return torch.cuda.get_device_name(self.torch_device)
        if self.kind == "npu":
            return str(torch.npu.get_device_name(self.torch_device))  # type: ignore[attr-defined]
        return f"cpu ({os.cpu_count()} cores)"

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.torch_device)
        elif self.kind == "npu":
            torch.npu.synchronize(self.torch_device)  # type: ignore[attr-defined]

    def memory_info(self) -> tuple[int, int]:
        """(free bytes, total bytes) of device memory; on CPU, MemAvailable and MemTotal."""
        if self.kind == "cuda":
            free, total = torch.cuda.mem_get_info(self.torch_device)
            return int(free), int(total)
        if self.kind == "npu":
            free, total = torch.npu.mem_get_info(self.torch_device)  # type: ignore[attr-defined]
            return int(free), int(total)
        return _host_memory()

    def empty_cache(self) -> None:
        if self.kind == "cuda":
            torch.cuda.empty_cache()
        elif self.kind == "npu":
            torch.npu.empty_cache()  # type: ignore[attr-defined]


def _host_memory() -> tuple[int, int]:
    """MemAvailable / MemTotal from /proc/meminfo (Linux); falls back to sysconf totals."""
    try:
        info: dict[str, int] = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total // 2, total


def npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return False
    return bool(torch.npu.is_available())  # type: ignore[attr-defined]


def get_device(kind: str) -> Device:
    """Adapter for "cuda", "cuda:N", "cpu", "npu" or "npu:N"; a clear error if it is absent."""
    base, _, idx = kind.partition(":")
    if idx and not idx.isdigit():
        raise ValueError(f"device {kind!r}: expected 'cuda', 'cpu' or 'npu', optionally with ':<index>'")
    index = int(idx) if idx else 0
    if base == "cpu":
        return Device(
            "cpu",
            torch.device("cpu"),
            supports_triton=False,
            supports_graphs=False,
            default_dtype=torch.float32,
        )
    if base == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {kind!r} requested but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use device='cpu'"
            )
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {kind!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
        try:
            import triton  # noqa: F401

            has_triton = True
        except ImportError:
            has_triton = False
        return Device(
            "cuda",
            torch.device("cuda", index),
            supports_triton=has_triton,
            supports_graphs=True,
            default_dtype=torch.bfloat16,
        )
    if base == "npu":
        if not npu_available():
            raise RuntimeError(
                f"device {kind!r} requested but Ascend NPU support is absent: the `torch_npu` package "
                "is not installed or finds no NPU"
            )
        return Device(
            "npu",
            torch.device("npu", index),
            supports_triton=False,
            supports_graphs=False,
            default_dtype=torch.bfloat16,
        )
    raise ValueError(f"unknown device {kind!r}; expected 'cuda', 'cpu' or 'npu'")
