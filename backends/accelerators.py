"""Catalog of accelerator peak figures for the analytic (roofline) cost model.

All compute figures are DENSE peaks: NVIDIA datasheets headline the 2:4-structured-sparsity
numbers, which are exactly twice the dense ones, so those are halved here. Units: TFLOPS / TOPS
(1e12 per second), memory in the vendor's "GB" (HBM/DRAM capacities are binary-sized, so
`memory_bytes` reads them as GiB), bandwidths in decimal GB/s (1e9 bytes per second).
`interconnect_bw_gbps` is the per-device, per-direction bandwidth of the scale-up link that
tensor-parallel all-reduces and pipeline sends use.

Where a vendor publishes no per-chip datasheet (Ascend 910B, Hygon DCU) the derivation is spelled
out next to the entry; treat those as the least certain rows and calibrate against a measured
profile before drawing conclusions from them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AcceleratorSpec:
    name: str
    vendor: str
    peak_bf16_tflops: float  # dense
    peak_fp16_tflops: float  # dense
    peak_fp8_tflops: float | None  # dense; None where the hardware has no FP8 matrix unit
    peak_int8_tops: float  # dense
    memory_gb: float  # vendor "GB" per device (read as GiB, see module docstring)
    memory_bw_gbps: float  # GB/s, decimal
    interconnect_bw_gbps: float  # GB/s per direction per device, scale-up link
    interconnect: str
    source: str

    def __post_init__(self) -> None:
        for f in ("peak_bf16_tflops", "peak_fp16_tflops", "peak_int8_tops", "memory_gb", "memory_bw_gbps",
                  "interconnect_bw_gbps"):
            v = getattr(self, f)
            if not v > 0:
                raise ValueError(f"accelerator {self.name!r}: field {f} must be > 0, got {v!r}")
        if self.peak_fp8_tflops is not None and not self.peak_fp8_tflops > 0:
            raise ValueError(f"accelerator {self.name!r}: field peak_fp8_tflops must be > 0 or None, "
                             f"got {self.peak_fp8_tflops!r}")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 2**30

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in operations per second for a matrix-unit dtype ('bf16', 'fp16', 'fp8', 'int8')."""
        if dtype == "bf16":
            return self.peak_bf16_tflops * 1e12
        if dtype == "fp16":
            return self.peak_fp16_tflops * 1e12
        if dtype == "int8":
            return self.peak_int8_tops * 1e12
        if dtype == "fp8":
            if self.peak_fp8_tflops is None:
                raise ValueError(f"accelerator {self.name!r} has no FP8 matrix throughput; "
                                 f"use dtype 'bf16', 'fp16' or 'int8'")
            return self.peak_fp8_tflops * 1e12
        raise ValueError(f"unknown dtype {dtype!r}; expected one of 'bf16', 'fp16', 'fp8', 'int8'")


_CATALOG: dict[str, AcceleratorSpec] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 column) and the H100 architecture whitepaper
    # (dense BF16/FP16 989.4 TFLOPS, FP8 and INT8 1978.9; the datasheet's 1,979 / 3,958 are sparse).
    # NVLink 4: 900 GB/s total bidirectional -> 450 GB/s per direction.
    "h100-sxm": AcceleratorSpec(
        name="NVIDIA H100 SXM5 80GB", vendor="NVIDIA",
        peak_bf16_tflops=989.4, peak_fp16_tflops=989.4, peak_fp8_tflops=1978.9, peak_int8_tops=1978.9,
        memory_gb=80, memory_bw_gbps=3350, interconnect_bw_gbps=450, interconnect="NVLink 4 (18 links)",
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5), nvidia.com/en-us/data-center/h100/; "
               "NVIDIA H100 Tensor Core GPU Architecture whitepaper (dense figures)",
    ),
    # NVIDIA H200 datasheet (SXM): same Hopper GH100 compute as H100 SXM (sparse 1,979 BF16 /
    # 3,958 FP8 -> dense 989.4 / 1978.9), 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s bidirectional.
    "h200": AcceleratorSpec(
        name="NVIDIA H200 SXM 141GB", vendor="NVIDIA",
        peak_bf16_tflops=989.4, peak_fp16_tflops=989.4, peak_fp8_tflops=1978.9, peak_int8_tops=1978.9,
        memory_gb=141, memory_bw_gbps=4800, interconnect_bw_gbps=450, interconnect="NVLink 4 (18 links)",
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM), nvidia.com/en-us/data-center/h200/",
    ),
    # NVIDIA A100 datasheet (80GB SXM): BF16/FP16 312 dense (624 sparse), INT8 624 dense
    # (1,248 sparse), 2,039 GB/s HBM2e, NVLink 3 600 GB/s bidirectional -> 300 per direction. No FP8.
    "a100-80gb": AcceleratorSpec(
        name="NVIDIA A100 SXM4 80GB", vendor="NVIDIA",
        peak_bf16_tflops=312, peak_fp16_tflops=312, peak_fp8_tflops=None, peak_int8_tops=624,
        memory_gb=80, memory_bw_gbps=2039, interconnect_bw_gbps=300, interconnect="NVLink 3 (12 links)",
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM), nvidia.com/en-us/data-center/a100/",
    ),
    # Huawei publishes no per-chip datasheet for the 910B family (it is sold inside Atlas 800T A2).
    # The 910B3 variant of Atlas 800T A2 is taken: 20 Da Vinci AI cores (npu-smi / Ascend device
    # virtualization templates), each cube doing 16x16x16 = 4096 FP16 MACs per cycle (Huawei Da Vinci
    # architecture, Hot Chips 31, 2019), at 1.8 GHz: 20 * 4096 * 2 * 1.8e9 = 294.9 TFLOPS dense
    # FP16/BF16, INT8 twice that. 64 GB HBM2e at 1.6 TB/s. HCCS: full mesh of 8 NPUs with 392 GB/s
    # bidirectional per NPU as quoted for Atlas 800T A2 -> 196 GB/s per direction (measured
    # all-reduce bandwidth is far lower; lower AnalyticEfficiency.allreduce for this part). No FP8.
    "ascend-910b": AcceleratorSpec(
        name="Huawei Ascend 910B3", vendor="Huawei",
        peak_bf16_tflops=294.9, peak_fp16_tflops=294.9, peak_fp8_tflops=None, peak_int8_tops=589.8,
        memory_gb=64, memory_bw_gbps=1600, interconnect_bw_gbps=196, interconnect="HCCS (8-NPU full mesh)",
        source="Derived: Huawei Da Vinci architecture (Hot Chips 31, 2019) cube throughput x 20 AI cores x "
               "1.8 GHz for Ascend 910B3; Huawei Atlas 800T A2 training server specifications (HBM, HCCS)",
    ),
    # Cambricon MLU370-X8 product page / launch release (2022-03-21): one card = two Siyuan 370
    # chips; FP16 and BF16 96 TFLOPS, INT8 256 TOPS, 48 GB LPDDR5 at 614.4 GB/s, MLU-Link 200 GB/s
    # bidirectional per card -> 100 GB/s per direction. Cambricon quotes no sparsity, so dense. No FP8.
    "mlu370": AcceleratorSpec(
        name="Cambricon MLU370-X8", vendor="Cambricon",
        peak_bf16_tflops=96, peak_fp16_tflops=96, peak_fp8_tflops=None, peak_int8_tops=256,
        memory_gb=48, memory_bw_gbps=614.4, interconnect_bw_gbps=100, interconnect="MLU-Link",
        source="Cambricon MLU370-X8 product page, cambricon.com (MLU370-X8 intelligent accelerator card "
               "specifications; launch announcement 2022-03-21)",
    ),
    # Hygon DCU K100-AI (Shensuan-2, gfx926) vendor spec table: BF16/FP16 196 TFLOPS, INT8 392 TOPS,
    # 64 GB HBM2e at 896 GB/s; no sparsity quoted, so dense; no FP8. Hygon publishes no per-link
    # figure for its card-to-card fabric, so the host link is assumed: PCIe 4.0 x16, ~32 GB/s per
    # direction (a conservative lower bound).
    "hygon-dcu": AcceleratorSpec(
        name="Hygon DCU K100-AI", vendor="Hygon",
        peak_bf16_tflops=196, peak_fp16_tflops=196, peak_fp8_tflops=None, peak_int8_tops=392,
        memory_gb=64, memory_bw_gbps=896, interconnect_bw_gbps=32, interconnect="PCIe 4.0 x16 (assumed)",
        source="Hygon DCU K100-AI product specifications (hygon.cn DCU product page: FP16/BF16 196 TFLOPS, "
               "INT8 392 TOPS, 64GB HBM2e, 896 GB/s); interconnect assumed PCIe 4.0 x16",
    ),
    # One device = a 2-socket server of Intel Xeon Platinum 8480+ (Sapphire Rapids, 56 cores each,
    # 2.0 GHz base; Intel ARK). AMX does 1024 BF16 FLOPs and 2048 INT8 ops per cycle per core (Intel
    # Architecture Instruction Set Extensions Programming Reference, AMX chapter; Intel AMX
    # overview): 112 cores * 1024 * 2.0e9 = 229.4 TFLOPS BF16, 458.8 TOPS INT8 at base clock.
    # FP16 has no AMX path on Sapphire Rapids (AMX-FP16 arrived with Granite Rapids); AVX-512 FP16
    # gives 2 FMA ports * 32 lanes * 2 = 128 FLOPs/cycle/core -> 28.7 TFLOPS. 8 channels DDR5-4800
    # per socket: 2 * 8 * 38.4 = 614.4 GB/s; 512 GB = 16 x 32 GB DIMMs. Devices (servers) talk over
    # a 200 Gb/s NIC -> 25 GB/s per direction.
    "cpu": AcceleratorSpec(
        name="2x Intel Xeon Platinum 8480+ (Sapphire Rapids, AMX)", vendor="Intel",
        peak_bf16_tflops=229.4, peak_fp16_tflops=28.7, peak_fp8_tflops=None, peak_int8_tops=458.8,
        memory_gb=512, memory_bw_gbps=614.4, interconnect_bw_gbps=25,
        interconnect="200 Gb/s Ethernet/InfiniBand",
        source="Intel ARK: Xeon Platinum 8480+ (56 cores, 2.0 GHz base, 8x DDR5-4800); Intel AMX overview "
               "(1024 BF16 / 2048 INT8 ops per cycle per core)",
    ),
}

_ALIASES: dict[str, str] = {
    "h100": "h100-sxm",
    "h100-sxm5": "h100-sxm",
    "h200-sxm": "h200",
    "a100": "a100-80gb",
    "a100-sxm": "a100-80gb",
    "910b": "ascend-910b",
    "ascend-910b3": "ascend-910b",
    "mlu370-x8": "mlu370",
    "k100-ai": "hygon-dcu",
    "dcu": "hygon-dcu",
}


def accelerator_names() -> list[str]:
    return sorted(_CATALOG)


def get_accelerator(name: str) -> AcceleratorSpec:
    """Catalog entry by key or alias (case-insensitive)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _CATALOG[key]
    except KeyError:
        known = ", ".join(accelerator_names())
        aliases = ", ".join(f"{a}->{t}" for a, t in sorted(_ALIASES.items()))
        raise KeyError(f"unknown accelerator {name!r}; known: {known} (aliases: {aliases})") from None
