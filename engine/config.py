"""Engine configuration: which model, where, in what precision, and how big its KV pool is.

Field names follow vLLM's engine arguments where the concept is the same, so a run can be
described the same way to the engine and to the simulator that mirrors it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.model_spec import DecoderSpec
from sim.config import ASYNC_MODES

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    # A Hugging Face model directory, a .gguf file, a catalog architecture name from
    # backends/models.py (random weights, for timing), or a DecoderSpec (random weights, tests).
    model: str | DecoderSpec
    dtype: str = "auto"  # "auto" = the device's default (bfloat16 on CUDA/NPU, float32 on CPU)
    device: str = "cuda"  # "cuda" | "cpu" | "npu", optionally ":<index>"
    block_size: int = 16
    gpu_memory_utilization: float = 0.9  # share of device memory the engine may use in all
    cpu_kv_fraction: float = 0.25  # on CPU: share of available RAM the KV pool may take
    num_kv_blocks: int | None = None  # explicit pool size; overrides the memory-based sizing
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    max_model_len: int | None = None  # default: the model's max_position_embeddings, capped at 32768
    enable_prefix_caching: bool = True
    cuda_graphs: bool = True  # capture decode-only steps (CUDA only; ignored elsewhere)
    # Batch-1 decode graph's GEMVs (engine/cuda_graphs.py): "auto" captures cuBLAS and split-K
    # variants and keeps the fastest; "cublas", "split" (engine/triton_splitk.py, every split
    # forced) and "fused" (engine/triton_gemv.py) force one.
    decode_gemv: str = "auto"
    # Steps with prefill tokens up to this many tokens replay CUDA graphs too (engine/step_graphs.py),
    # bucketed by token count; 0 runs them eagerly. Needs cuda_graphs.
    step_graph_tokens: int = 512
    attention_backend: str = "auto"  # "auto" (Triton on CUDA, else torch) | "torch" | "triton"
    # Schedule and launch step n+1 while step n runs (vLLM's --async-scheduling, SGLang's overlap
    # scheduler), so the host's scheduling and bookkeeping hide under the device's work: "off";
    # "graphs", steps that replay a CUDA graph only (an eager step first collects the step in
    # flight); "all". Under "all", an eager step's Python launch (its pageable input copies wait for
    # the step in flight) delays the previous step's tokens: on an H200, Azure TTFT P50 rose 40-70%.
    # Greedy requests only; a run with sampling requests goes one step at a time.
    async_scheduling: str = "off"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.block_size < 1:
            raise ValueError(f"EngineConfig.block_size must be >= 1, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"EngineConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if not 0.0 < self.cpu_kv_fraction <= 1.0:
            raise ValueError(f"EngineConfig.cpu_kv_fraction must be in (0, 1], got {self.cpu_kv_fraction}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"EngineConfig.num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError(
                f"EngineConfig.max_num_batched_tokens and max_num_seqs must be >= 1, got "
                f"{self.max_num_batched_tokens} and {self.max_num_seqs}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"EngineConfig.max_model_len must be >= 1, got {self.max_model_len}")
        if self.async_scheduling not in ASYNC_MODES:
            raise ValueError(
                f"EngineConfig.async_scheduling must be one of {ASYNC_MODES}, got {self.async_scheduling!r}"
            )
        if self.step_graph_tokens < 0:
            raise ValueError(f"EngineConfig.step_graph_tokens must be >= 0, got {self.step_graph_tokens}")
        if self.decode_gemv not in ("auto", "cublas", "split", "fused"):
            raise ValueError(
                "EngineConfig.decode_gemv must be 'auto', 'cublas', 'split' or 'fused', "
                f"got {self.decode_gemv!r}"
            )
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(
                "EngineConfig.attention_backend must be 'auto', 'torch' or 'triton', "
                f"got {self.attention_backend!r}"
            )
