"""Run results: what a simulated or measured run leaves behind, in one format for both.

A run directory holds `summary.json` (run metadata and the metrics), `requests.csv` (one row
per request), `iterations.csv` (one row per iteration, or per run of identical-shape decode
iterations the simulator jumped over: `count` > 1, durations rising linearly from
`dur_first` to `dur_last`) and `itl.json` (the pooled inter-token-latency histogram).
Directories are written to a temporary sibling and renamed, so a run never half-writes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REQUEST_COLUMNS: dict[str, str] = {
    "id": "i8",
    "replica": "i4",
    "arrival": "f8",
    "first_scheduled": "f8",
    "first_token": "f8",
    "finish": "f8",
    "prompt_tokens": "i8",
    "output_tokens": "i8",
    "cached_tokens": "i8",
    "preemptions": "i4",
    "ttft_slo": "f8",
    "tpot_slo": "f8",
    "e2e_slo": "f8",
    "status": "O",  # finished | rejected | unfinished
    "reject_reason": "O",
}

ITERATION_COLUMNS: dict[str, str] = {
    "replica": "i4",
    "start": "f8",  # start of the first iteration in the row
    "end": "f8",  # end of the last iteration in the row
    "count": "i8",  # iterations in the row
    "dur_first": "f8",
    "dur_last": "f8",
    "num_seqs": "i4",
    "num_prefill_seqs": "i4",
    "prefill_tokens": "i8",  # per iteration
    "decode_tokens": "i8",  # per iteration
    "kv_blocks_used": "i8",  # at the end of the row
    "kv_blocks_total": "i8",
    "preempted": "i4",
}


class ItlHistogram:
    """Pooled inter-token latencies in log-spaced bins (0.23% relative width, 1 us .. 10^4 s).

    A million-request simulation emits hundreds of millions of tokens; keeping each latency
    would cost gigabytes, and the percentiles users quote only need this resolution.
    """

    LO = 1e-6
    BINS_PER_DECADE = 1000
    DECADES = 10
    N = BINS_PER_DECADE * DECADES
    # Values are buffered and binned in bulk (numpy) every this many: a simulator adds one
    # latency per token, and binning each one in Python costs more than the iteration it
    # belongs to. Every value goes through the same `_index`, buffered or not.
    FLUSH_EVERY = 1 << 16

    def __init__(self) -> None:
        self._counts = np.zeros(self.N + 2, dtype=np.int64)  # [underflow, bins..., overflow]
        self._total = 0.0  # exact sum, for the mean
        self._n = 0
        self._ones: list[float] = []  # pending values of weight 1
        self._vals: list[float] = []  # pending weighted values ...
        self._wts: list[int] = []  # ... and their weights

    @classmethod
    def _index(cls, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            idx = np.floor(np.log10(np.maximum(values, 1e-300) / cls.LO) * cls.BINS_PER_DECADE)
        return np.clip(idx, -1, cls.N).astype(np.int64) + 1

    def _flush(self) -> None:
        if self._ones:
            v = np.array(self._ones, dtype=np.float64)
            self._ones = []
            self._counts += np.bincount(self._index(v), minlength=self.N + 2)
            self._total += float(v.sum())
            self._n += len(v)
        if self._vals:
            v = np.array(self._vals, dtype=np.float64)
            w = np.array(self._wts, dtype=np.int64)
            self._vals = []
            self._wts = []
            np.add.at(self._counts, self._index(v), w)
            self._total += float(v @ w)
            self._n += int(w.sum())

    @property
    def counts(self) -> np.ndarray:
        self._flush()
        return self._counts

    @property
    def total(self) -> float:
        self._flush()
        return self._total

    @total.setter
    def total(self, value: float) -> None:
        self._flush()
        self._total = value

    @property
    def n(self) -> int:
        self._flush()
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self._flush()
        self._n = value

    def add(self, value: float, weight: int = 1) -> None:
        if weight == 1:
            self._ones.append(value)
            if len(self._ones) >= self.FLUSH_EVERY:
                self._flush()
        else:
            self._vals.append(value)
            self._wts.append(weight)
            if len(self._vals) >= self.FLUSH_EVERY:
                self._flush()

    def add_ones(self, values: list[float]) -> None:
        """Add each of `values` with weight 1 (the per-token latencies of one iteration)."""
        ones = self._ones
        ones += values
        if len(ones) >= self.FLUSH_EVERY:
            self._flush()

    def add_many(self, values: np.ndarray | list[float], weight: int = 1) -> None:
        """Add each of `values` with the same weight (`weight` sequences that share them)."""
        if len(values) == 0:
            return
        vals = values.tolist() if isinstance(values, np.ndarray) else values
        if weight == 1:
            self.add_ones(vals)
            return
        self._vals += vals
        self._wts += [weight] * len(vals)
        if len(self._vals) >= self.FLUSH_EVERY:
            self._flush()

    def merge(self, other: ItlHistogram) -> None:
        self._flush()
        self._counts += other.counts
        self._total += other.total
        self._n += other.n

    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    @classmethod
    def bin_centres(cls, idx: np.ndarray) -> np.ndarray:
        """Centres (s) of bins `idx` (0 = underflow): where percentiles land."""
        k = np.asarray(idx, dtype=np.float64) - 1
        return cls.LO * 10 ** ((k + 0.5) / cls.BINS_PER_DECADE)

    @classmethod
    def bin_upper_edges(cls, idx: np.ndarray) -> np.ndarray:
        """Upper edges (s) of bins `idx`: every count of bin i lies below edge i."""
        k = np.asarray(idx, dtype=np.float64) - 1
        return cls.LO * 10 ** ((k + 1) / cls.BINS_PER_DECADE)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), at the centre of the bin that holds it."""
        if self.n == 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        rank = q / 100.0 * (self.n - 1)
        i = int(np.searchsorted(cum, rank + 1, side="left"))
        return float(self.bin_centres(np.array([i]))[0])

    def to_json(self) -> dict:
        nz = np.flatnonzero(self.counts)
        return {
            "lo": self.LO,
            "bins_per_decade": self.BINS_PER_DECADE,
            "total": self.total,
            "n": self.n,
            "bins": nz.tolist(),
            "counts": self.counts[nz].tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> ItlHistogram:
        if d.get("lo") != cls.LO or d.get("bins_per_decade") != cls.BINS_PER_DECADE:
            raise ValueError("itl.json: histogram binning differs from this version's")
        h = cls()
        h.counts[np.asarray(d["bins"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.int64)
        h.total = float(d["total"])
        h.n = int(d["n"])
        return h


class _Columns:
    """Growable column store for iteration rows (amortised doubling, numpy-backed)."""

    def __init__(self, schema: dict[str, str], capacity: int = 1024) -> None:
        self.schema = schema
        self.n = 0
        self.cols = {k: np.zeros(capacity, dtype=t) for k, t in schema.items()}

    def append(self, row: tuple) -> None:
        if self.n == len(next(iter(self.cols.values()))):
            for k, v in self.cols.items():
                self.cols[k] = np.concatenate([v, np.zeros_like(v)])
        n = self.n
        for v, x in zip(self.cols.values(), row):
            v[n] = x
        self.n = n + 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v[: self.n] for k, v in self.cols.items()}


@dataclass
class RunResult:
    meta: dict
    requests: dict[str, np.ndarray]
    iterations: dict[str, np.ndarray]
    itl: ItlHistogram
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "run"))

    def write(self, out_dir: str | Path) -> Path:
        """Write the run atomically: a temp directory beside `out_dir`, renamed into place."""
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            _write_csv(tmp / "requests.csv", self.requests, REQUEST_COLUMNS)
            _write_csv(tmp / "iterations.csv", self.iterations, ITERATION_COLUMNS)
            (tmp / "itl.json").write_text(json.dumps(self.itl.to_json()))
            summary = {"meta": self.meta, "metrics": self.metrics}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def read(cls, run_dir: str | Path) -> RunResult:
        d = Path(run_dir)
        if not (d / "summary.json").is_file():
            raise FileNotFoundError(f"{d}: not a run directory (no summary.json)")
        summary = json.loads((d / "summary.json").read_text())
        return cls(
            meta=summary.get("meta", {}),
            requests=_read_csv(d / "requests.csv", REQUEST_COLUMNS),
            iterations=_read_csv(d / "iterations.csv", ITERATION_COLUMNS),
            itl=ItlHistogram.from_json(json.loads((d / "itl.json").read_text())),
            metrics=summary.get("metrics", {}),
        )


STATUS_NAMES = ("unfinished", "finished", "rejected")


class RunRecorder:
    """Collects a run's per-request outcomes (preallocated by request id), iteration rows and
    the pooled ITL histogram, for the simulator and the engine alike."""

    def __init__(self, num_requests: int, record_iterations: bool = True) -> None:
        n = num_requests
        self.cols = {k: np.zeros(n, dtype=t) for k, t in REQUEST_COLUMNS.items() if t != "O"}
        for k in ("first_scheduled", "first_token", "finish", "ttft_slo", "tpot_slo", "e2e_slo"):
            self.cols[k].fill(np.nan)
        self.cols["replica"].fill(-1)
        self.cols["id"][:] = np.arange(n)
        self._status = np.zeros(n, dtype=np.int8)  # index into STATUS_NAMES
        self._reasons: dict[int, str] = {}
        self.record_iterations = record_iterations
        self.iterations = _Columns(ITERATION_COLUMNS)
        self.itl = ItlHistogram()

    def _request(self, i: int, req, replica: int) -> None:
        c = self.cols
        c["arrival"][i] = req.arrival
        c["prompt_tokens"][i] = req.prompt_len
        c["replica"][i] = replica
        for k in ("ttft_slo", "tpot_slo", "e2e_slo"):
            v = getattr(req, k)
            if v is not None:
                c[k][i] = v

    def _progress(self, seq) -> int:
        i = seq.request.id
        self._request(i, seq.request, seq.replica)
        c = self.cols
        c["first_scheduled"][i] = seq.first_scheduled
        c["first_token"][i] = seq.first_token
        c["output_tokens"][i] = seq.num_output_tokens
        c["cached_tokens"][i] = seq.num_cached_tokens
        c["preemptions"][i] = seq.num_preemptions
        return i

    def finish(self, seq) -> None:
        i = self._progress(seq)
        self.cols["finish"][i] = seq.finish
        self._status[i] = 1

    def reject(self, seq, reason: str) -> None:
        i = seq.request.id
        self._request(i, seq.request, seq.replica)
        self._status[i] = 2
        self._reasons[i] = reason

    def unfinished(self, seq) -> None:
        """A sequence still in flight when the run stopped (horizon reached)."""
        self._progress(seq)

    def iteration(self, row: tuple) -> None:
        if self.record_iterations:
            self.iterations.append(row)

    def result(self, meta: dict, arrivals: np.ndarray | None = None) -> RunResult:
        cols = dict(self.cols)
        if arrivals is not None:  # requests never routed (horizon) still get their arrival
            cols["arrival"] = np.asarray(arrivals, dtype=np.float64).copy()
        names = np.array(STATUS_NAMES, dtype=object)
        cols["status"] = names[self._status]
        reasons = np.full(len(self._status), "", dtype=object)
        for i, r in self._reasons.items():
            reasons[i] = r
        cols["reject_reason"] = reasons
        cols = {k: cols[k] for k in REQUEST_COLUMNS}
        return RunResult(meta=meta, requests=cols, iterations=self.iterations.arrays(), itl=self.itl)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def _fmt(col: np.ndarray) -> list[str]:
    if col.dtype.kind == "f":
        return [repr(x) for x in col.tolist()]
    return [str(x) for x in col.tolist()]


def _write_csv(path: Path, cols: dict[str, np.ndarray], schema: dict[str, str], chunk: int = 50_000) -> None:
    """Write in row chunks so that a million-row table never exists as Python strings at once."""
    names = list(schema)
    n = len(cols[names[0]]) if names else 0
    arrays = [np.asarray(cols[k]) for k in names]
    with open(path, "w", newline="") as f:
        f.write(",".join(names) + "\n")
        for lo in range(0, n, chunk):
            text = [_fmt(a[lo : lo + chunk]) for a in arrays]
            f.write("\n".join(",".join(r) for r in zip(*text)))
            f.write("\n")


def _read_csv(path: Path, schema: dict[str, str]) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header line")
    header = rows[0]
    missing = [k for k in schema if k not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    out = {}
    for k, t in schema.items():
        j = header.index(k)
        vals = [r[j] for r in rows[1:]]
        try:
            out[k] = np.array(vals, dtype=t) if vals else np.zeros(0, dtype=t)
        except ValueError as e:
            raise ValueError(f"{path}: column {k}: {e}") from None
    return out
