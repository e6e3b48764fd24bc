"""Summaries of a trace: rates, burstiness, length percentiles and prefix sharing, as text or HTML.

Backs ``sagellm trace stats FILE [--plot out.html]``: `trace_stats` computes a flat dict (JSON
friendly: floats, ints, None where undefined), `format_stats` renders it as a text table and
`plot_stats` writes a self-contained plotly HTML page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from traces.schema import Trace

__all__ = ["format_stats", "plot_stats", "prefix_hit_tokens", "trace_stats"]

PERCENTILES = (50, 90, 99)


def prefix_hit_tokens(trace: Trace) -> np.ndarray:
    """Per request, prompt tokens an infinite prefix cache could serve from earlier requests.

    A request reuses its leading blocks whose hash id appeared in any earlier request, up to the
    first unseen block (prefix caching only reuses a contiguous prefix, as in vLLM's automatic
    prefix caching and Mooncake's KV reuse); the hit is capped at the prompt length because the
    last block may be partial. Requests at the same instant count in file order.
    """
    hits = np.zeros(len(trace), dtype=np.int64)
    if trace.prefix_hashes is None or trace.hash_block_tokens <= 0:
        return hits
    seen: set[int] = set()
    block = trace.hash_block_tokens
    for i, hs in enumerate(trace.prefix_hashes):
        k = 0
        for h in hs:
            if h not in seen:
                break
            k += 1
        hits[i] = min(k * block, int(trace.prompt_len[i]))
        seen.update(hs)
    return hits


def _dist(x: np.ndarray) -> dict[str, float | int | None]:
    if len(x) == 0:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    pct = np.percentile(x, PERCENTILES)
    return {
        "mean": float(np.mean(x)),
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, pct, strict=True)},
        "max": int(np.max(x)),
    }


def trace_stats(trace: Trace) -> dict[str, Any]:
    """Count, duration, mean rate (n-1 gaps over the span), inter-arrival CV (population std /
    mean of gaps), prompt/output length mean and percentiles, and prefix-sharing figures."""
    n = len(trace)
    a = trace.arrival
    duration = float(a[-1] - a[0]) if n else 0.0
    gaps = np.diff(a)
    rate = (n - 1) / duration if n >= 2 and duration > 0 else None
    cv = float(np.std(gaps) / np.mean(gaps)) if len(gaps) and np.mean(gaps) > 0 else None
    s: dict[str, Any] = {
        "name": trace.name,
        "source": trace.source,
        "count": n,
        "duration_s": duration,
        "mean_rate_rps": rate,
        "interarrival_cv": cv,
        "prompt_tokens_total": int(trace.prompt_len.sum()),
        "output_tokens_total": int(trace.output_len.sum()),
    }
    for col in ("prompt_len", "output_len"):
        for k, v in _dist(getattr(trace, col)).items():
            s[f"{col}_{k}"] = v
    if trace.prefix_hashes is not None and trace.hash_block_tokens > 0:
        hits = prefix_hit_tokens(trace)
        total = int(trace.prompt_len.sum())
        s["hash_block_tokens"] = trace.hash_block_tokens
        s["unique_hashes"] = len({h for hs in trace.prefix_hashes for h in hs})
        s["prefix_hit_fraction"] = float(hits.sum() / total) if total else None
        s["requests_with_prefix_hit"] = float(np.mean(hits > 0)) if n else None
    skipped = trace.meta.get("skipped_rows", {}).get("count", 0)
    if skipped:
        s["skipped_rows"] = skipped
    return s


_LABELS = {
    "count": "requests",
    "duration_s": "duration (s)",
    "mean_rate_rps": "mean arrival rate (req/s)",
    "interarrival_cv": "inter-arrival CV",
    "prompt_tokens_total": "prompt tokens, total",
    "output_tokens_total": "output tokens, total",
    "hash_block_tokens": "hash block (tokens)",
    "unique_hashes": "unique prefix hashes",
    "prefix_hit_fraction": "ideal prefix-cache hit (token fraction)",
    "requests_with_prefix_hit": "requests with a prefix hit (fraction)",
    "skipped_rows": "bad rows skipped on load",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_stats(stats: dict[str, Any]) -> str:
    """A readable two-column text table; length figures are grouped in one row per column."""
    rows: list[tuple[str, str]] = []
    for key in ("name", "source"):
        if stats.get(key):
            rows.append((key, str(stats[key])))
    for key in (
        "count",
        "duration_s",
        "mean_rate_rps",
        "interarrival_cv",
        "prompt_tokens_total",
        "output_tokens_total",
    ):
        if key in stats:
            rows.append((_LABELS[key], _fmt(stats[key])))
    stat_names = ("mean", *(f"p{q}" for q in PERCENTILES), "max")
    for col, label in (("prompt_len", "prompt length"), ("output_len", "output length")):
        if f"{col}_mean" in stats:
            rows.append((label, "  ".join(f"{k} {_fmt(stats[f'{col}_{k}'])}" for k in stat_names)))
    for key in (
        "hash_block_tokens",
        "unique_hashes",
        "prefix_hit_fraction",
        "requests_with_prefix_hit",
        "skipped_rows",
    ):
        if key in stats:
            rows.append((_LABELS[key], _fmt(stats[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def plot_stats(trace: Trace, path_html: str | Path, bins: int = 60) -> Path:
    """Write a self-contained HTML page (plotly.js inlined, works offline): arrival rate over time
    in `bins` time bins, length histograms and CDFs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path_html)
    fig = make_subplots(
        rows=3,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}], [{}, {}]],
        subplot_titles=(
            "arrival rate over time",
            "prompt length",
            "output length",
            "prompt length CDF",
            "output length CDF",
        ),
    )
    a = trace.arrival
    if len(a):
        span = float(a[-1] - a[0]) or 1.0
        counts, edges = np.histogram(a, bins=bins, range=(float(a[0]), float(a[0]) + span))
        width = edges[1] - edges[0]
        fig.add_trace(
            go.Scatter(x=edges[:-1] + width / 2, y=counts / width, mode="lines", name="req/s"), 1, 1
        )
    fig.update_xaxes(title_text="time (s)", row=1, col=1)
    fig.update_yaxes(title_text="requests/s", row=1, col=1)
    for c, (col, label) in enumerate((("prompt_len", "prompt"), ("output_len", "output")), start=1):
        x = getattr(trace, col)
        if len(x) == 0:
            continue
        # Binned and quantile-sampled here, so the page stays small for million-request traces.
        counts, edges = np.histogram(x, bins=bins)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=f"{label} length"), 2, c)
        q = np.linspace(0, 1, min(len(x), 1000))
        fig.add_trace(go.Scatter(x=np.quantile(x, q), y=q, mode="lines", name=f"{label} CDF"), 3, c)
        for r in (2, 3):
            fig.update_xaxes(title_text="tokens", row=r, col=c)
    fig.update_layout(title=f"trace {trace.name} ({len(trace)} requests)", showlegend=False, height=900)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
