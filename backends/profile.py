"""The measured-profile file: iteration times of one model on one device, for the calibrated cost model.

A profile is what `engine/profiler.py` measures and `backends/calibrated.py` fits: the wall time
of the engine's real step (`ModelRunner.execute`: input preparation, forward pass, LM head and
sampling, synchronised) over a grid of iteration shapes, plus the CPU work the engine does per
iteration outside that call (the scheduler's decision, the replica step's bookkeeping), with
input preparation and sampling also timed on their own so a report can split the step.

The file is JSON with these top-level fields:
  format, version       "sagellm-profile", 1
  header                where and how it was measured: device name, model name and config, dtype,
                        tp/pp, block size, pool and budget limits, software versions, date, command
  samples               one object per iteration shape: prefill [[new, cached], ...], num_decode,
                        decode_context (sum of attended context over the decodes), times_s (every
                        timed repeat) and median_s
  overhead              one object per timed CPU-side iteration: its size (num_seqs, num_prefill_seqs,
                        prefill_tokens, decode_tokens), median seconds of schedule / complete /
                        prepare / sample, and n repeats
  serving               (optional) one object per iteration of a short replay of a synthetic workload
                        through the engine's real serving loop: the step's shape (prefill, num_decode,
                        decode_context, decode_max_context) and the seconds of its schedule, execute
                        and complete phases as served, and the host time of its launch (see
                        `ServingStep`)
Samples may carry decode_max_context (the longest decode context; absent or 0 = contexts spread
evenly; given, the profiler laid them out as `engine.profiler.decode_contexts` says: a linear ramp
up to it, or one long context among even ones), device_s (steps that replay a CUDA graph: median
device seconds, from CUDA events around the graph and the copy of its ids, the step queued behind
another of its shape) and launch_s
(median host seconds of launching the step: staging its inputs, then Python's kernel launches or
the graph's replay); async scheduling's model needs both. warm_s (median seconds of the same step
timed a second time, right after the first: in serving, a step mostly follows one of its own shape)
is recorded to compare the two timings. prep_s (eager steps: median host seconds of building the
step's input tensors, part of launch_s) is what the device waits for before the step's first kernel.
Samples, overhead and serving records are written one per line, so a diff of two
profiles reads row by row and an error in a hand-edited file points at its line.
`Profile.load(Profile.save(p))` equals `p` exactly (floats are written with Python's shortest
round-tripping repr).

The simulator side never imports torch; this module only reads and writes the file.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.cost_model import BatchShape

FORMAT = "sagellm-profile"
VERSION = 1
# The model-architecture fields a profile's header records ("model_config"): a profile calibrates only a
# model of this shape, so loaders, the calibrated cost model and the validation all compare these.
MODEL_SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)

# Torch dtype names as the engine reports them, and the short names the simulator config uses.
DTYPE_ALIASES: dict[str, str] = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def canonical_dtype(name: str) -> str:
    """'bf16' / 'bfloat16' / 'torch.bfloat16' -> 'bfloat16'; ValueError for anything else."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(sorted(DTYPE_ALIASES))}")
    return DTYPE_ALIASES[key]


class ProfileError(ValueError):
    """A profile that does not follow the format; `path` is the JSON path of the bad field."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"field {_path_text(path)}: {message}")


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "<top level>"


# ------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ProfileHeader:
    device: str  # e.g. 'NVIDIA H100 80GB HBM3' (torch.cuda.get_device_name) or 'cpu (16 cores)'
    device_kind: str  # 'cuda' | 'cpu' | 'npu'
    model: str  # architecture name (catalog name, HF directory name, or a test spec's name)
    model_config: dict[str, Any]  # the engine's DecoderSpec fields, JSON-typed
    dtype: str  # torch dtype name: 'bfloat16' | 'float16' | 'float32'
    tp: int
    pp: int
    block_size: int
    num_kv_blocks: int  # of the engine that was profiled (bounds the grid's KV footprint)
    max_num_batched_tokens: int  # the grid stays within these: beyond them the engine never runs
    max_num_seqs: int
    max_model_len: int
    enable_prefix_caching: bool  # of the scheduler state timed for the overhead records
    attention_backend: str  # 'triton' | 'torch'
    cuda_graphs: bool  # decode-only steps replay captured graphs
    graph_buckets: tuple[int, ...]  # the captured decode batch sizes (a batch runs padded to one)
    warmup: int
    repeats: int
    software: dict[str, str]  # python, torch, triton, cuda, numpy versions
    date: str  # ISO 8601, UTC
    command: str  # the command line that produced the file
    wall_seconds: float  # how long profiling took
    notes: tuple[str, ...] = ()  # e.g. grid points skipped because they exceed the KV pool
    # token-count buckets of the small-step graphs (engine/step_graphs.py; a step runs padded to one)
    step_graph_buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class ShapeSample:
    """Measured seconds of the engine's step on one iteration shape."""

    prefill: tuple[tuple[int, int], ...]  # (new tokens, cached tokens) per prefill sequence
    num_decode: int
    decode_context: int  # sum over decode sequences of attended tokens (cached + 1)
    times_s: tuple[float, ...]  # every timed repeat, in order
    median_s: float
    decode_max_context: int = 0  # longest decode context; 0: the contexts are spread evenly
    device_s: float | None = None  # graph steps: median device seconds (events), else None
    launch_s: float | None = None  # median host seconds of the step's launch (staging included)
    warm_s: float | None = None  # median seconds of the step timed again right after itself
    prep_s: float | None = None  # eager steps: median host seconds of input preparation (in launch_s)

    @property
    def shape(self) -> BatchShape:
        return BatchShape(
            [tuple(p) for p in self.prefill], self.num_decode, self.decode_context, self.decode_max_context
        )

    @property
    def n(self) -> int:
        return len(self.times_s)

    @property
    def kind(self) -> str:
        """'decode' (pure decode), 'prefill' (prefill only) or 'mixed'."""
        return shape_kind(self.shape)


def shape_kind(shape: BatchShape) -> str:
    if not shape.prefill:
        return "decode"
    return "mixed" if shape.num_decode else "prefill"


@dataclass(frozen=True)
class OverheadSample:
    """Median CPU seconds of one iteration's work besides the forward pass.

    `schedule_s` (the scheduler's decision, `ReplicaCore.schedule`) and `complete_s` (the
    replica step's bookkeeping, `ReplicaCore.complete`) happen outside `ModelRunner.execute`;
    `prepare_s` (building input tensors) and `sample_s` (picking tokens from logits) happen
    inside it and are already part of the shape samples' times: they are recorded for reports.
    """

    num_seqs: int
    num_prefill_seqs: int
    prefill_tokens: int
    decode_tokens: int
    schedule_s: float
    complete_s: float
    prepare_s: float
    sample_s: float
    n: int  # timed repeats behind each median


@dataclass(frozen=True)
class ServingStep:
    """One iteration of the engine's real serving loop (a replay of a synthetic workload).

    The grid samples time each shape in isolation; serving steps are what the loop actually did
    under load: `schedule_s` (the scheduler's decision, from the top of the loop to the call into
    the model runner), `execute_s` (`ModelRunner.execute`) and `complete_s` (the replica step's
    bookkeeping plus admitting arrivals, up to the next schedule call, or to the end of the
    bookkeeping when the replica then went idle). On a busy host the CPU phases run several times
    slower than when timed in a tight loop (caches and clocks are cold after each wait on the
    device), which is why they are measured here. `launch_s` is the host part of execute_s that
    queued the step (`ModelRunner.launch`): the calibrated model takes graph steps' host part from
    these, because the grid's launches run slow (on an H200 host 0.23-0.32 ms for a batch-1 decode
    graph after building a synthetic batch, against 0.11 ms in the loop).
    """

    prefill: tuple[tuple[int, int], ...]
    num_decode: int
    decode_context: int
    decode_max_context: int
    schedule_s: float
    execute_s: float
    complete_s: float
    launch_s: float | None = None  # absent in profiles before it was recorded

    @property
    def shape(self) -> BatchShape:
        return BatchShape(
            [tuple(p) for p in self.prefill], self.num_decode, self.decode_context, self.decode_max_context
        )

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill)

    @property
    def prefill_tokens(self) -> int:
        return sum(n for n, _ in self.prefill)

    def as_sample(self) -> ShapeSample:
        """The step's execute time as a one-repeat shape sample."""
        return ShapeSample(
            self.prefill, self.num_decode, self.decode_context, (self.execute_s,), self.execute_s,
            self.decode_max_context,
        )  # fmt: skip


@dataclass
class Profile:
    header: ProfileHeader
    samples: list[ShapeSample] = field(default_factory=list)
    overhead: list[OverheadSample] = field(default_factory=list)
    serving: list[ServingStep] = field(default_factory=list)

    # -------------------------------------------------------------------- dict form
    def to_dict(self) -> dict[str, Any]:
        h = self.header
        header = {
            "device": h.device,
            "device_kind": h.device_kind,
            "model": h.model,
            "model_config": h.model_config,
            "dtype": h.dtype,
            "tp": h.tp,
            "pp": h.pp,
            "block_size": h.block_size,
            "num_kv_blocks": h.num_kv_blocks,
            "max_num_batched_tokens": h.max_num_batched_tokens,
            "max_num_seqs": h.max_num_seqs,
            "max_model_len": h.max_model_len,
            "enable_prefix_caching": h.enable_prefix_caching,
            "attention_backend": h.attention_backend,
            "cuda_graphs": h.cuda_graphs,
            "graph_buckets": list(h.graph_buckets),
            "step_graph_buckets": list(h.step_graph_buckets),
            "warmup": h.warmup,
            "repeats": h.repeats,
            "software": dict(h.software),
            "date": h.date,
            "command": h.command,
            "wall_seconds": h.wall_seconds,
            "notes": list(h.notes),
        }
        return {
            "format": FORMAT,
            "version": VERSION,
            "header": header,
            "samples": [_sample_dict(s) for s in self.samples],
            "overhead": [
                {
                    "num_seqs": o.num_seqs,
                    "num_prefill_seqs": o.num_prefill_seqs,
                    "prefill_tokens": o.prefill_tokens,
                    "decode_tokens": o.decode_tokens,
                    "schedule_s": o.schedule_s,
                    "complete_s": o.complete_s,
                    "prepare_s": o.prepare_s,
                    "sample_s": o.sample_s,
                    "n": o.n,
                }
                for o in self.overhead
            ],
            "serving": [_serving_dict(t) for t in self.serving],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Profile:
        """Parse and validate; raises `ProfileError` naming the JSON path of the first bad field."""
        r = _Reader()
        top = r.obj(d, ())
        fmt = r.get(top, (), "format", str)
        if fmt != FORMAT:
            raise ProfileError(("format",), f"expected {FORMAT!r}, got {fmt!r}")
        ver = r.get(top, (), "version", int)
        if ver != VERSION:
            raise ProfileError(("version",), f"this code reads version {VERSION}, got {ver!r}")
        r.no_extra(top, (), {"format", "version", "header", "samples", "overhead", "serving"})
        header = _read_header(r, r.get(top, (), "header", dict), ("header",))
        samples_raw = r.get(top, (), "samples", list)
        samples = [_read_sample(r, s, ("samples", i)) for i, s in enumerate(samples_raw)]
        over_raw = r.get(top, (), "overhead", list)
        overhead = [_read_overhead(r, o, ("overhead", i)) for i, o in enumerate(over_raw)]
        serving_raw = r.get(top, (), "serving", list) if "serving" in top else []  # optional: older files
        serving = [_read_serving(r, t, ("serving", i)) for i, t in enumerate(serving_raw)]
        return cls(header, samples, overhead, serving)

    # -------------------------------------------------------------------- files
    def dumps(self) -> str:
        """JSON text: the header indented, then one sample / overhead record per line."""
        d = self.to_dict()
        lines = ["{", f'  "format": {json.dumps(d["format"])},', f'  "version": {d["version"]},']
        header = json.dumps(d["header"], indent=2, allow_nan=False).replace("\n", "\n  ")
        lines.append(f'  "header": {header},')
        for key in ("samples", "overhead", "serving"):
            rows = d[key]
            end = "," if key != "serving" else ""
            if not rows:
                lines.append(f'  "{key}": []{end}')
                continue
            lines.append(f'  "{key}": [')
            for i, row in enumerate(rows):
                sep = "," if i < len(rows) - 1 else ""
                lines.append("    " + json.dumps(row, allow_nan=False) + sep)
            lines.append(f"  ]{end}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary sibling renamed into place)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        text = self.dumps()
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        tmp.replace(p)
        return p

    @classmethod
    def loads(cls, text: str, source: str = "<profile>") -> Profile:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: line {e.lineno}: not valid JSON ({e.msg})") from None
        try:
            return cls.from_dict(d)
        except ProfileError as e:
            line = None
            for k in range(len(e.path), -1, -1):  # a missing field: point at its parent object
                line = _locate_line(text, e.path[:k])
                if line is not None:
                    break
            where = f"{source}: line {line}" if line is not None else source
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: profile file not found")
        return cls.loads(p.read_text(), str(p))

    # -------------------------------------------------------------------- summaries
    def counts(self) -> dict[str, int]:
        out = {"decode": 0, "prefill": 0, "mixed": 0}
        for s in self.samples:
            out[s.kind] += 1
        return out


# ------------------------------------------------------------------------------------------------
# Validation


class _Reader:
    """Typed field access that names the JSON path of whatever is wrong."""

    @staticmethod
    def obj(v: Any, path: tuple) -> dict:
        if not isinstance(v, dict):
            raise ProfileError(path, f"expected a JSON object, got {type(v).__name__}")
        return v

    @staticmethod
    def check(v: Any, path: tuple, typ: type) -> Any:
        if typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ProfileError(path, f"expected a number, got {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ProfileError(path, f"expected a finite number, got {v!r}")
            return v
        if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ProfileError(path, f"expected an integer, got {v!r}")
        if typ is not int and not isinstance(v, typ):
            names = {str: "a string", bool: "true or false", list: "a list", dict: "a JSON object"}
            raise ProfileError(path, f"expected {names.get(typ, typ.__name__)}, got {v!r}")
        return v

    def get(self, d: dict, path: tuple, key: str, typ: type) -> Any:
        if key not in d:
            raise ProfileError(path + (key,), "missing")
        return self.check(d[key], path + (key,), typ)

    @staticmethod
    def no_extra(d: dict, path: tuple, known: set[str]) -> None:
        extra = sorted(set(d) - known)
        if extra:
            raise ProfileError(path + (extra[0],), f"unknown field; known: {', '.join(sorted(known))}")


def _positive(v: int | float, path: tuple, allow_zero: bool = False) -> None:
    if v < 0 or (v == 0 and not allow_zero):
        raise ProfileError(path, f"expected {'>= 0' if allow_zero else '> 0'}, got {v!r}")


_HEADER_INT_FIELDS = (
    "tp",
    "pp",
    "block_size",
    "num_kv_blocks",
    "max_num_batched_tokens",
    "max_num_seqs",
    "max_model_len",
    "repeats",
)


def _read_header(r: _Reader, h: dict, path: tuple) -> ProfileHeader:
    known = {
        "device",
        "device_kind",
        "model",
        "model_config",
        "dtype",
        "tp",
        "pp",
        "block_size",
        "num_kv_blocks",
        "max_num_batched_tokens",
        "max_num_seqs",
        "max_model_len",
        "enable_prefix_caching",
        "attention_backend",
        "cuda_graphs",
        "graph_buckets",
        "step_graph_buckets",
        "warmup",
        "repeats",
        "software",
        "date",
        "command",
        "wall_seconds",
        "notes",
    }
    r.no_extra(h, path, known)
    ints = {}
    for k in _HEADER_INT_FIELDS:
        ints[k] = r.get(h, path, k, int)
        _positive(ints[k], path + (k,))
    warmup = r.get(h, path, "warmup", int)
    _positive(warmup, path + ("warmup",), allow_zero=True)
    kind = r.get(h, path, "device_kind", str)
    if kind not in ("cuda", "cpu", "npu"):
        raise ProfileError(path + ("device_kind",), f"expected 'cuda', 'cpu' or 'npu', got {kind!r}")
    dtype = r.get(h, path, "dtype", str)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ProfileError(path + ("dtype",), f"expected 'bfloat16', 'float16' or 'float32', got {dtype!r}")
    buckets_raw = r.get(h, path, "graph_buckets", list)
    buckets = tuple(r.check(b, path + ("graph_buckets", i), int) for i, b in enumerate(buckets_raw))
    if list(buckets) != sorted(set(buckets)) or any(b < 1 for b in buckets):
        raise ProfileError(
            path + ("graph_buckets",), f"expected increasing positive sizes, got {buckets_raw!r}"
        )
    step_raw = r.get(h, path, "step_graph_buckets", list) if "step_graph_buckets" in h else []
    step_buckets = tuple(r.check(b, path + ("step_graph_buckets", i), int) for i, b in enumerate(step_raw))
    if list(step_buckets) != sorted(set(step_buckets)) or any(b < 1 for b in step_buckets):
        raise ProfileError(
            path + ("step_graph_buckets",), f"expected increasing positive sizes, got {step_raw!r}"
        )
    graphs = r.get(h, path, "cuda_graphs", bool)
    if graphs and not buckets:
        raise ProfileError(path + ("graph_buckets",), "cuda_graphs is true but no bucket sizes are listed")
    software = r.get(h, path, "software", dict)
    for k, v in software.items():
        r.check(v, path + ("software", k), str)
    notes_raw = r.get(h, path, "notes", list)
    notes = tuple(r.check(n, path + ("notes", i), str) for i, n in enumerate(notes_raw))
    wall = r.get(h, path, "wall_seconds", float)
    _positive(wall, path + ("wall_seconds",), allow_zero=True)
    mc = r.get(h, path, "model_config", dict)
    for k in MODEL_SHAPE_FIELDS:
        v = r.get(mc, path + ("model_config",), k, int)
        _positive(v, path + ("model_config", k))
    return ProfileHeader(
        device=r.get(h, path, "device", str),
        device_kind=kind,
        model=r.get(h, path, "model", str),
        model_config=mc,
        dtype=dtype,
        tp=ints["tp"],
        pp=ints["pp"],
        block_size=ints["block_size"],
        num_kv_blocks=ints["num_kv_blocks"],
        max_num_batched_tokens=ints["max_num_batched_tokens"],
        max_num_seqs=ints["max_num_seqs"],
        max_model_len=ints["max_model_len"],
        enable_prefix_caching=r.get(h, path, "enable_prefix_caching", bool),
        attention_backend=r.get(h, path, "attention_backend", str),
        cuda_graphs=graphs,
        graph_buckets=buckets,
        step_graph_buckets=step_buckets,
        warmup=warmup,
        repeats=ints["repeats"],
        software=dict(software),
        date=r.get(h, path, "date", str),
        command=r.get(h, path, "command", str),
        wall_seconds=wall,
        notes=notes,
    )


def _read_shape(r: _Reader, s: dict, path: tuple) -> tuple[tuple[tuple[int, int], ...], int, int, int]:
    """(prefill, num_decode, decode_context, decode_max_context) of a sample or serving record."""
    prefill_raw = r.get(s, path, "prefill", list)
    prefill = []
    for i, p in enumerate(prefill_raw):
        pp = path + ("prefill", i)
        if (
            not isinstance(p, list)
            or len(p) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in p)
            or p[0] < 1
            or p[1] < 0
        ):
            raise ProfileError(pp, f"expected [new tokens >= 1, cached tokens >= 0], got {p!r}")
        prefill.append((p[0], p[1]))
    nd = r.get(s, path, "num_decode", int)
    ctx = r.get(s, path, "decode_context", int)
    if nd < 0 or ctx < nd or (nd == 0 and ctx != 0):
        raise ProfileError(
            path + ("decode_context",),
            f"expected >= num_decode ({nd}) and 0 when there are no decodes, got {ctx}",
        )
    mx = r.get(s, path, "decode_max_context", int) if "decode_max_context" in s else 0
    if mx and not (nd and -(-ctx // nd) <= mx <= ctx - (nd - 1)):
        raise ProfileError(
            path + ("decode_max_context",),
            f"expected 0 or a longest context between {-(-ctx // nd) if nd else 0} and {ctx - nd + 1} "
            f"for {nd} decode(s) of {ctx} tokens, got {mx}",
        )
    if not prefill and nd == 0:
        raise ProfileError(path, "empty iteration: no prefill and no decode sequences")
    return tuple(prefill), nd, ctx, mx


def _read_sample(r: _Reader, s: Any, path: tuple) -> ShapeSample:
    s = r.obj(s, path)
    r.no_extra(
        s, path,
        {"prefill", "num_decode", "decode_context", "decode_max_context", "times_s", "median_s", "device_s",
         "launch_s", "warm_s", "prep_s"},
    )  # fmt: skip
    prefill, nd, ctx, mx = _read_shape(r, s, path)
    times_raw = r.get(s, path, "times_s", list)
    if not times_raw:
        raise ProfileError(path + ("times_s",), "expected at least one timed repeat")
    times = tuple(r.check(t, path + ("times_s", i), float) for i, t in enumerate(times_raw))
    for i, t in enumerate(times):
        _positive(t, path + ("times_s", i))
    med = r.get(s, path, "median_s", float)
    want = statistics.median(times)
    if not math.isclose(med, want, rel_tol=1e-9, abs_tol=0.0):
        raise ProfileError(path + ("median_s",), f"is {med!r} but the median of times_s is {want!r}")
    opt: dict[str, float | None] = {}
    for key in ("device_s", "launch_s", "warm_s", "prep_s"):
        opt[key] = None
        if key in s:
            opt[key] = r.get(s, path, key, float)
            _positive(opt[key], path + (key,))  # type: ignore[arg-type]
    return ShapeSample(prefill, nd, ctx, times, med, mx, **opt)


def _read_serving(r: _Reader, t: Any, path: tuple) -> ServingStep:
    t = r.obj(t, path)
    floats = ("schedule_s", "execute_s", "complete_s")
    shape_keys = {"prefill", "num_decode", "decode_context", "decode_max_context"}
    r.no_extra(t, path, {*shape_keys, "launch_s", *floats})
    prefill, nd, ctx, mx = _read_shape(r, t, path)
    fv: dict[str, float | None] = {k: r.get(t, path, k, float) for k in floats}
    for k in floats:
        _positive(fv[k], path + (k,), allow_zero=k != "execute_s")  # type: ignore[arg-type]
    fv["launch_s"] = None
    if "launch_s" in t:
        fv["launch_s"] = r.get(t, path, "launch_s", float)
        _positive(fv["launch_s"], path + ("launch_s",))  # type: ignore[arg-type]
    return ServingStep(prefill, nd, ctx, mx, **fv)  # type: ignore[arg-type]


def _serving_dict(t: ServingStep) -> dict[str, Any]:
    d: dict[str, Any] = {
        "prefill": [list(p) for p in t.prefill],
        "num_decode": t.num_decode,
        "decode_context": t.decode_context,
        "decode_max_context": t.decode_max_context,
        "schedule_s": t.schedule_s,
        "execute_s": t.execute_s,
        "complete_s": t.complete_s,
    }
    if t.launch_s is not None:
        d["launch_s"] = t.launch_s
    return d


def _sample_dict(s: ShapeSample) -> dict[str, Any]:
    d: dict[str, Any] = {
        "prefill": [list(p) for p in s.prefill],
        "num_decode": s.num_decode,
        "decode_context": s.decode_context,
    }
    if s.decode_max_context:
        d["decode_max_context"] = s.decode_max_context
    d["times_s"] = list(s.times_s)
    d["median_s"] = s.median_s
    if s.device_s is not None:
        d["device_s"] = s.device_s
    if s.launch_s is not None:
        d["launch_s"] = s.launch_s
    if s.warm_s is not None:
        d["warm_s"] = s.warm_s
    if s.prep_s is not None:
        d["prep_s"] = s.prep_s
    return d


def _read_overhead(r: _Reader, o: Any, path: tuple) -> OverheadSample:
    o = r.obj(o, path)
    ints = ("num_seqs", "num_prefill_seqs", "prefill_tokens", "decode_tokens", "n")
    floats = ("schedule_s", "complete_s", "prepare_s", "sample_s")
    r.no_extra(o, path, set(ints) | set(floats))
    iv = {k: r.get(o, path, k, int) for k in ints}
    for k in ints:
        _positive(iv[k], path + (k,), allow_zero=k not in ("num_seqs", "n"))
    if iv["num_prefill_seqs"] > iv["num_seqs"]:
        raise ProfileError(path + ("num_prefill_seqs",), f"exceeds num_seqs ({iv['num_seqs']})")
    if iv["decode_tokens"] != iv["num_seqs"] - iv["num_prefill_seqs"]:
        raise ProfileError(
            path + ("decode_tokens",), "expected num_seqs - num_prefill_seqs (one token per decode)"
        )
    if iv["prefill_tokens"] < iv["num_prefill_seqs"]:
        raise ProfileError(
            path + ("prefill_tokens",), "expected >= num_prefill_seqs (a prefill computes >= 1)"
        )
    fv = {k: r.get(o, path, k, float) for k in floats}
    for k in floats:
        _positive(fv[k], path + (k,), allow_zero=True)
    return OverheadSample(**iv, **fv)


# ------------------------------------------------------------------------------------------------
# Line numbers for errors


def _locate_line(text: str, path: tuple[str | int, ...]) -> int | None:
    """1-based line where the value at JSON `path` starts (None if the walk fails).

    A small walk over the text with the standard decoder's `raw_decode` to skip values, so an
    error about `samples[12].times_s[3]` can point at the line a reader must fix.
    """
    dec = json.JSONDecoder()
    ws = " \t\n\r"
    pos = 0

    def skip(p: int) -> int:
        while p < len(text) and text[p] in ws:
            p += 1
        return p

    try:
        pos = skip(0)
        for step in path:
            if isinstance(step, str):
                if text[pos] != "{":
                    return None
                pos = skip(pos + 1)
                while text[pos] != "}":
                    key, pos = json.decoder.scanstring(text, pos + 1)
                    pos = skip(pos)
                    pos = skip(pos + 1)  # ':'
                    if key == step:
                        break
                    _, pos = dec.raw_decode(text, pos)
                    pos = skip(pos)
                    if text[pos] == ",":
                        pos = skip(pos + 1)
                else:
                    return None
            else:
                if text[pos] != "[":
                    return None
                pos = skip(pos + 1)
                for _ in range(step):
                    _, pos = dec.raw_decode(text, pos)
                    pos = skip(pos)
                    if text[pos] != ",":
                        return None
                    pos = skip(pos + 1)
        return text.count("\n", 0, pos) + 1
    except (IndexError, ValueError):
        return None
