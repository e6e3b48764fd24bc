"""Device adapters, configuration checks, KV sizing, and the import-light `engine` package."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from engine.config import EngineConfig  # noqa: E402
from engine.device import get_device  # noqa: E402
from engine.kv_cache import KVCache, kv_bytes_per_block, plan_num_blocks  # noqa: E402
from engine.testing import tiny_spec  # noqa: E402


def test_importing_engine_does_not_import_torch() -> None:
    code = "import sys, engine; assert 'torch' not in sys.modules, 'engine imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_device() -> None:
    d = get_device("cpu")
    free, total = d.memory_info()
    assert 0 < free <= total
    assert d.default_dtype == torch.float32 and not d.supports_triton


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_absent_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        get_device("cuda")


def test_absent_npu_is_a_clear_error() -> None:
    try:
        import torch_npu  # noqa: F401

        pytest.skip("torch_npu is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="torch_npu"):
        get_device("npu")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu:0"])
def test_unknown_device_strings(bad: str) -> None:
    with pytest.raises(ValueError, match="device"):
        get_device(bad)


@pytest.mark.parametrize(
    "field,value",
    [
        ("dtype", "int8"),
        ("block_size", 0),
        ("gpu_memory_utilization", 1.5),
        ("num_kv_blocks", 0),
        ("max_num_seqs", 0),
        ("attention_backend", "x"),
    ],
)
def test_config_validation(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="x", **{field: value})


def test_kv_bytes_and_explicit_plan() -> None:
    spec = tiny_spec("llama")  # 2 layers, 2 KV heads, head_dim 16
    assert kv_bytes_per_block(spec, 16, torch.float16) == 2 * 2 * 16 * 2 * 16 * 2
    plan = plan_num_blocks(
        spec,
        get_device("cpu"),
        torch.float16,
        16,
        num_kv_blocks=10,
        gpu_memory_utilization=0.9,
        cpu_kv_fraction=0.25,
        activation_bytes=0,
    )
    assert plan.num_blocks == 10


def test_cpu_plan_uses_a_share_of_available_memory() -> None:
    spec = tiny_spec("llama")
    dev = get_device("cpu")
    per = kv_bytes_per_block(spec, 16, torch.float32)
    plan = plan_num_blocks(
        spec,
        dev,
        torch.float32,
        16,
        num_kv_blocks=None,
        gpu_memory_utilization=0.9,
        cpu_kv_fraction=0.001,
        activation_bytes=0,
    )
    free, _ = dev.memory_info()
    assert abs((plan.num_blocks + 1) * per - free * 0.001) <= 2 * per + 0.0001 * free


def test_too_small_budget_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no room for a KV cache"):
        plan_num_blocks(
            tiny_spec("llama"),
            get_device("cpu"),
            torch.float32,
            16,
            num_kv_blocks=None,
            gpu_memory_utilization=0.9,
            cpu_kv_fraction=1e-12,
            activation_bytes=0,
        )


def test_kv_cache_layout_has_one_scratch_block() -> None:
    spec = tiny_spec("qwen3")
    kv = KVCache(spec, num_blocks=5, block_size=8, dtype=torch.float32, device=torch.device("cpu"))
    assert kv.k.shape == (2, 6, 8, 2, 16) and kv.scratch_block == 5 and kv.num_blocks == 5
