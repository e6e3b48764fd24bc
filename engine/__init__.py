"""The real inference engine: plain PyTorch (plus Triton kernels on CUDA) behind the same replica
step the simulator uses.

Modules, one job each: `config` (EngineConfig), `device` (CUDA / CPU / Ascend adapters),
`model_spec` (hyper-parameters from HF config, GGUF or the catalog), `weights` (HF safetensors,
GGUF, random), `model` (Llama / Qwen2 / Qwen3 decoder over a packed token batch), `attention`
(paged-attention metadata and the reference path), `triton_attention` and `triton_ops` (CUDA
kernels), `kv_cache` (paged pools and their sizing), `sampling`, `tokenizer`, `cuda_graphs`,
`model_runner` (ScheduledBatch -> sampled tokens), `llm_engine` (generate and trace replay),
`reference` (dense oracle for tests) and `testing` (tiny specs, hand-driven steps).

This package file imports nothing, so `import engine` does not pull in torch; import the
submodules you need.
"""
