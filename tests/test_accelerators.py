"""Accelerator catalog: lookups, aliases, errors, and the dense-vs-sparse conventions."""

from __future__ import annotations

import dataclasses

import pytest

from backends.accelerators import AcceleratorSpec, accelerator_names, get_accelerator

REQUIRED_KEYS = ["h100-sxm", "h200", "a100-80gb", "ascend-910b", "mlu370", "hygon-dcu", "cpu"]


def test_catalog_has_required_keys() -> None:
    assert set(REQUIRED_KEYS) <= set(accelerator_names())


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_every_entry_is_complete_and_consistent(key: str) -> None:
    a = get_accelerator(key)
    assert isinstance(a, AcceleratorSpec)
    assert a.name and a.vendor and a.interconnect and a.source
    # The scale-up link is always slower than local memory on these parts.
    assert a.interconnect_bw_gbps < a.memory_bw_gbps
    # INT8 matrix throughput is never below the 16-bit one.
    assert a.peak_int8_tops >= a.peak_bf16_tflops
    if a.peak_fp8_tflops is not None:
        assert a.peak_fp8_tflops >= a.peak_bf16_tflops


def test_aliases_and_case() -> None:
    assert get_accelerator("h100") is get_accelerator("h100-sxm")
    assert get_accelerator("A100") is get_accelerator("a100-80gb")
    assert get_accelerator(" H200 ") is get_accelerator("h200")


def test_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError) as e:
        get_accelerator("tpu-v9")
    msg = str(e.value)
    assert "tpu-v9" in msg
    for k in REQUIRED_KEYS:
        assert k in msg


def test_nvidia_figures_are_dense() -> None:
    # Datasheets headline sparse BF16 1,979 (H100/H200) and 624 (A100); dense is half.
    h100, h200, a100 = get_accelerator("h100"), get_accelerator("h200"), get_accelerator("a100")
    assert h100.peak_bf16_tflops == pytest.approx(1979 / 2, rel=1e-3)
    assert h100.peak_fp8_tflops == pytest.approx(2 * h100.peak_bf16_tflops, rel=1e-3)
    assert h200.peak_bf16_tflops == h100.peak_bf16_tflops  # same GH100 compute
    assert h200.memory_bw_gbps > h100.memory_bw_gbps and h200.memory_gb > h100.memory_gb
    assert a100.peak_bf16_tflops == 312 and a100.peak_int8_tops == 624
    assert a100.peak_fp8_tflops is None


def test_peak_flops_units_and_dtypes() -> None:
    h100 = get_accelerator("h100")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.peak_flops("fp8") == pytest.approx(1978.9e12)
    assert h100.peak_flops("int8") == pytest.approx(1978.9e12)
    with pytest.raises(ValueError, match="no FP8"):
        get_accelerator("a100").peak_flops("fp8")
    with pytest.raises(ValueError, match="unknown dtype"):
        h100.peak_flops("fp4")


def test_memory_bytes_reads_vendor_gb_as_gib() -> None:
    assert get_accelerator("h100").memory_bytes == 80 * 2**30


def test_invalid_spec_rejected() -> None:
    good = get_accelerator("h100")
    with pytest.raises(ValueError, match="memory_bw_gbps"):
        dataclasses.replace(good, memory_bw_gbps=0)
    with pytest.raises(ValueError, match="peak_fp8_tflops"):
        dataclasses.replace(good, peak_fp8_tflops=-1.0)
