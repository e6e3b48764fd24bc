"""One self-contained HTML page comparing runs: a metrics table and interactive plotly figures.

The page must open anywhere without a network (reports get mailed and archived), so plotly.js is
inlined, once for the whole page; each figure is a bare <div> that uses it. Big runs are
decimated (at most `MAX_POINTS` points per line) so a million-request run still gives a page of a
few megabytes, most of it plotly.js itself. PNG copies of the figures go through kaleido, which
drives a Chrome/Chromium browser.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from benchmarks.metrics import (
    SLO,
    check_columns,
    compute_metrics,
    format_metrics,
    percentile_key,
)
from sim.results import ItlHistogram, RunResult

MAX_POINTS = 5000  # per plotted line; the page stays small and the browser stays responsive
MIN_POINTS_PER_REPLICA = 200
THROUGHPUT_BINS = 200
DEFAULT_TITLE = "sageLLM Workbench run report"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PNG_HELP = (
    "PNG export needs the kaleido package (>= 1.0; `pip install 'sagellm-workbench[png]'`) and a "
    "Chrome or Chromium browser. On Debian/Ubuntu: `apt-get install chromium` (found at "
    "/usr/bin/chromium); elsewhere point the BROWSER_PATH environment variable at a Chrome/Chromium "
    "executable, or download one with `plotly_get_chrome`."
)
# Meta rows of the comparison table: (label, meta keys tried in turn).
META_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("name", ("name",)),
    ("trace", ("trace",)),
    ("scheduler", ("scheduler",)),
    ("cost model", ("cost_model", "cost_model_name")),
    ("device", ("device",)),
    ("model", ("model",)),
    ("layout", ("layout",)),
)


@dataclass
class _Run:
    label: str  # unique across the page
    result: RunResult
    metrics: dict
    t0: float  # the run's time origin (first arrival), so runs line up on one time axis


# ---------------------------------------------------------------------------------------------
# PNG export


def _find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use, or None.

    Kaleido 1.x launches the browser through `choreographer`, which takes `BROWSER_PATH` if set,
    else a browser it downloaded itself (`plotly_get_chrome`), else chrome/chromium on PATH, else
    typical install paths such as Debian's /usr/bin/chromium. We ask it the same question and,
    should its internals move, fall back to the same search.
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.access(env, os.X_OK) else None
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
        if path and os.access(path, os.X_OK):
            return str(path)
    except Exception:  # noqa: BLE001 - best effort; the plain search below still answers
        pass
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.access(path, os.X_OK):
            return path
    return None


def png_export_available() -> bool:
    """Whether `write_report(..., png_dir=...)` can export PNGs here (kaleido and a browser)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return _find_browser() is not None


def _export_pngs(figures: dict[str, go.Figure], png_dir: Path) -> list[Path]:
    png_dir.mkdir(parents=True, exist_ok=True)
    paths = [png_dir / f"{key}.png" for key in figures]
    figs = list(figures.values())
    try:
        # one browser session for all figures: starting Chromium costs seconds each time
        pio.write_images(figs, paths, width=1100, height=550)
    except Exception as e:
        raise RuntimeError(f"PNG export to {png_dir} failed: {e}. {PNG_HELP}") from e
    return paths


# ---------------------------------------------------------------------------------------------
# Data preparation


def _decimate(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each bucket's minimum and maximum (plus both ends), so peaks survive decimation.

    Min-max aggregation as in plotly-resampler (Van Der Donckt et al., "Plotly-Resampler",
    CIKM 2022); lines of at most `max_points` points look the same as the full data at screen
    resolution.
    """
    n = len(x)
    if n <= max_points:
        return x, y
    nb = max((max_points - 2) // 2, 1)
    size = -(-n // nb)
    pad = nb * size - n
    yy = np.concatenate([y.astype(np.float64), np.full(pad, np.nan)]).reshape(nb, size)
    filled = ~np.isnan(yy).all(axis=1)
    base = np.arange(nb) * size
    safe = np.where(np.isnan(yy), 0.0, yy)
    lo = base + np.argmin(np.where(np.isnan(yy), np.inf, safe), axis=1)
    hi = base + np.argmax(np.where(np.isnan(yy), -np.inf, safe), axis=1)
    keep = np.unique(np.concatenate([[0, n - 1], lo[filled], hi[filled]]))
    keep = keep[keep < n]
    return x[keep], y[keep]


def _cdf_points(values: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF (x sorted, y = rank / n); above `max_points` sampled at evenly spaced ranks."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    y = np.arange(1, n + 1) / n
    if n > max_points:
        idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
        return v[idx], y[idx]
    return v, y


def _itl_cdf_points(run: _Run, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    h = run.result.itl
    if h.n == 0:
        return np.zeros(0), np.zeros(0)
    nz = np.flatnonzero(h.counts)
    x = ItlHistogram.bin_upper_edges(nz) * 1000.0
    y = np.cumsum(h.counts[nz]) / h.n
    if len(x) > max_points:
        idx = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
        x, y = x[idx], y[idx]
    return x, y


def _finished_latencies(run: _Run) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT, E2E and queueing delay in ms (finished requests, vLLM rules)."""
    r = run.result.requests
    fin = np.asarray(r["status"]).astype(str) == "finished"
    arr = np.asarray(r["arrival"], dtype=np.float64)[fin]
    sched = np.asarray(r["first_scheduled"], dtype=np.float64)[fin]
    first = np.asarray(r["first_token"], dtype=np.float64)[fin]
    fin_t = np.asarray(r["finish"], dtype=np.float64)[fin]
    out = np.asarray(r["output_tokens"], dtype=np.int64)[fin]
    ttft = first - arr
    e2e = fin_t - arr
    multi = out > 1
    tpot = (e2e[multi] - ttft[multi]) / (out[multi] - 1)
    return {"ttft": ttft * 1e3, "tpot": tpot * 1e3, "e2e": e2e * 1e3, "queue": (sched - arr) * 1e3}


def _run_origin(result: RunResult) -> float:
    arr = np.asarray(result.requests["arrival"], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size:
        return float(arr.min())
    starts = np.asarray(result.iterations["start"], dtype=np.float64)
    return float(starts.min()) if starts.size else 0.0


def _spread_into_bins(starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray,
                      edges: np.ndarray) -> np.ndarray:
    """Amounts spread uniformly over [start, end] (a point mass at `end` if end <= start), binned.

    A sweep over start/end events integrates the piecewise-constant rate, so overlapping
    intervals (several replicas, pipeline micro-batches) need no special care.
    """
    out = np.zeros(len(edges) - 1)
    point = ends <= starts
    if point.any():
        out += np.histogram(ends[point], bins=edges, weights=amounts[point])[0]
    s, e, a = starts[~point], ends[~point], amounts[~point]
    if s.size:
        rate = a / (e - s)
        t = np.concatenate([s, e])
        dr = np.concatenate([rate, -rate])
        order = np.argsort(t, kind="stable")
        t, dr = t[order], dr[order]
        r_after = np.cumsum(dr)
        integral = np.concatenate([[0.0], np.cumsum(r_after[:-1] * np.diff(t))])
        cum = np.interp(edges, t, integral, left=0.0, right=integral[-1])
        out += np.diff(cum)
    return out


def _output_token_times(run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, tokens) of output-token production, relative to the run origin.

    Each request's first token comes at its `first_token`; later tokens come from the decode
    steps of the iteration log (`decode_tokens` per iteration, spread over a jumped row's span).
    Without an iteration log, a finished request's other tokens are spread over
    [first_token, finish].
    """
    r, it = run.result.requests, run.result.iterations
    first = np.asarray(r["first_token"], dtype=np.float64)
    has_first = np.isfinite(first)
    ft = first[has_first] - run.t0
    starts, ends, toks = [ft], [ft], [np.ones(ft.size)]
    if len(it["start"]):
        starts.append(np.asarray(it["start"], dtype=np.float64) - run.t0)
        ends.append(np.asarray(it["end"], dtype=np.float64) - run.t0)
        toks.append(np.asarray(it["decode_tokens"], dtype=np.float64) * np.asarray(it["count"]))
    else:
        fin = (np.asarray(r["status"]).astype(str) == "finished") & has_first
        starts.append(first[fin] - run.t0)
        ends.append(np.asarray(r["finish"], dtype=np.float64)[fin] - run.t0)
        toks.append(np.asarray(r["output_tokens"], dtype=np.float64)[fin] - 1)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(toks)


def _per_replica(run: _Run) -> list[tuple[int, dict[str, np.ndarray]]]:
    it = run.result.iterations
    rep = np.asarray(it["replica"])
    out = []
    for k in np.unique(rep):
        sel = np.flatnonzero(rep == k)
        sel = sel[np.argsort(np.asarray(it["start"])[sel], kind="stable")]
        out.append((int(k), {c: np.asarray(v)[sel] for c, v in it.items()}))
    return out


# ---------------------------------------------------------------------------------------------
# Figures

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _layout(fig: go.Figure, title: str, xaxis: str, yaxis: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, template="plotly_white",
                      height=450, legend=dict(orientation="h", y=-0.2), margin=dict(t=60, b=40))
    return fig


def _log_toggle(fig: go.Figure) -> go.Figure:
    """Latency tails span decades under overload: let the reader switch the x axis to log."""
    fig.update_layout(updatemenus=[dict(
        type="buttons", direction="left", x=1.0, xanchor="right", y=1.12, yanchor="top",
        buttons=[dict(label="linear x", method="relayout", args=[{"xaxis.type": "linear"}]),
                 dict(label="log x", method="relayout", args=[{"xaxis.type": "log"}])],
    )])
    return fig


def _cdf_figure(runs: list[_Run], key: str, title: str) -> go.Figure:
    fig = go.Figure()
    for i, run in enumerate(runs):
        if key == "itl":
            x, y = _itl_cdf_points(run)
        else:
            x, y = _cdf_points(_finished_latencies(run)[key])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=run.label,
                                 line=dict(color=_colour(i), shape="hv")))
    return _log_toggle(_layout(fig, title, "latency (ms)", "fraction of samples"))


def _throughput_figure(runs: list[_Run]) -> go.Figure:
    data = [_output_token_times(run) for run in runs]
    t_end = max((float(np.max(e)) for _, e, _ in data if e.size), default=0.0)
    t_end = max(t_end, 1e-9)
    edges = np.linspace(0.0, t_end * (1 + 1e-9), THROUGHPUT_BINS + 1)
    width = edges[1] - edges[0]
    fig = go.Figure()
    for i, (run, (s, e, a)) in enumerate(zip(runs, data, strict=True)):
        tok = _spread_into_bins(s, e, a, edges)
        fig.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=tok / width, mode="lines",
                                 name=run.label, line=dict(color=_colour(i))))
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, f"Output token throughput over time ({width:.3g} s bins)",
                   "time since first arrival (s)", "output tokens / s")


def _replica_budget(n_replicas: int) -> int:
    return max(MAX_POINTS // max(n_replicas, 1), MIN_POINTS_PER_REPLICA)


def _kv_figure(runs: list[_Run]) -> go.Figure:
    fig = go.Figure()
    for i, run in enumerate(runs):
        reps = _per_replica(run)
        for k, it in reps:
            total = it["kv_blocks_total"].astype(np.float64)
            if not (total > 0).all():
                continue  # no block accounting on this replica (metrics reject mixed logs)
            frac = it["kv_blocks_used"] / total
            prev = np.concatenate([[0.0], frac[:-1]])
            # a row runs from the previous row's end value to its own end value: a jumped run of
            # decode iterations (count > 1) shows as one segment start -> end
            x = np.column_stack([it["start"], it["end"]]).ravel() - run.t0
            y = np.column_stack([prev, frac]).ravel()
            x, y = _decimate(x, y, _replica_budget(len(reps)))
            name = run.label if len(reps) == 1 else f"{run.label} r{k}"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=run.label,
                                     line=dict(color=_colour(i))))
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return _layout(fig, "KV cache use over time", "time since first arrival (s)",
                   "KV blocks used / total")


def _batch_figure(runs: list[_Run]) -> go.Figure:
    fig = go.Figure()
    for i, run in enumerate(runs):
        reps = _per_replica(run)
        for k, it in reps:
            s, e = it["start"] - run.t0, it["end"] - run.t0
            n = it["num_seqs"].astype(np.float64)
            # idle gaps between iterations show as batch size 0
            gap = np.concatenate([s[1:] > e[:-1] + 1e-9, [False]])
            x = np.column_stack([s, e, e, np.concatenate([s[1:], [0.0]])])
            y = np.column_stack([n, n, np.zeros_like(n), np.zeros_like(n)])
            keep = np.column_stack([np.ones_like(gap), np.ones_like(gap), gap, gap])
            x, y = x[keep], y[keep]
            x, y = _decimate(x, y, _replica_budget(len(reps)))
            name = run.label if len(reps) == 1 else f"{run.label} r{k}"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=run.label,
                                     line=dict(color=_colour(i))))
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, "Batch size over time", "time since first arrival (s)",
                   "sequences in the iteration")


def build_figures(runs: list[_Run]) -> dict[str, go.Figure]:
    """All report figures, keyed by the file stem their PNG gets."""
    return {
        "ttft_cdf": _cdf_figure(runs, "ttft", "TTFT CDF (time to first token)"),
        "tpot_cdf": _cdf_figure(runs, "tpot", "TPOT CDF (time per output token, excl. 1st)"),
        "itl_cdf": _cdf_figure(runs, "itl", "ITL CDF (inter-token latency, pooled histogram)"),
        "e2e_cdf": _cdf_figure(runs, "e2e", "E2E latency CDF"),
        "queue_cdf": _cdf_figure(runs, "queue", "Queueing delay CDF (arrival to first schedule)"),
        "throughput": _throughput_figure(runs),
        "kv_use": _kv_figure(runs),
        "batch_size": _batch_figure(runs),
    }


# ---------------------------------------------------------------------------------------------
# Table and page


def _meta_text(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, dict):
        if "name" in value:  # e.g. a cost model's config: its name is what tells runs apart
            return str(value["name"])
        return ", ".join(f"{k}={_meta_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_meta_text(v) for v in value)
    return str(value)


def _meta_value(meta: dict, keys: tuple[str, ...]) -> str:
    for k in keys:
        if k in meta:
            return _meta_text(meta[k])
    return "—"


def _fmt(value: object, spec: str = ".2f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _metric_rows(metrics: Sequence[dict]) -> list[tuple[str, list[str]]]:
    def row(label: str, get, spec: str = ".2f") -> tuple[str, list[str]]:
        vals = []
        for m in metrics:
            try:
                vals.append(_fmt(get(m), spec))
            except (KeyError, TypeError):
                vals.append("—")
        return label, vals

    rows = [
        row("requests (finished / rejected / unfinished)",
            lambda m: f"{m['finished']} / {m['rejected']} / {m['unfinished']}"),
        row("duration (s)", lambda m: m["duration_s"]),
        row("request throughput (req/s)", lambda m: m["request_throughput"], ".3f"),
        row("request goodput (req/s)", lambda m: m["request_goodput"], ".3f"),
        row("SLO attainment", lambda m: m["goodput"]["slo_attainment"], ".2%"),
        row("output throughput (tok/s)", lambda m: m["output_throughput"], ".1f"),
        row("total token throughput (tok/s)", lambda m: m["total_token_throughput"], ".1f"),
    ]
    pct_keys = [percentile_key(q) for q in metrics[0].get("percentiles", [])]
    for key, short in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"),
                       ("e2e_ms", "E2E"), ("queue_ms", "queueing delay")):
        rows.append(row(f"{short} mean (ms)", lambda m, k=key: m[k]["mean"]))
        for pk in pct_keys:
            rows.append(row(f"{short} {pk.upper()} (ms)", lambda m, k=key, p=pk: m[k][p]))
    rows += [
        row("prefix cache hit rate", lambda m: m["kv"]["prefix_hit_rate"], ".2%"),
        row("preemptions (total)", lambda m: m["kv"]["preemptions_total"]),
        row("preemptions per request", lambda m: m["kv"]["preemptions_per_request"], ".3f"),
        row("KV evictions", lambda m: m["kv"]["evictions"]),
        row("KV use peak", lambda m: m["kv"]["peak_use"], ".1%"),
        row("KV use mean (time-weighted)", lambda m: m["kv"]["mean_use"], ".1%"),
    ]
    return rows


def _table_html(runs: list[_Run]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(r.label)}</th>" for r in runs)
    body = []
    for label, keys in META_ROWS:
        cells = "".join(f"<td>{e(_meta_value(r.result.meta, keys))}</td>" for r in runs)
        body.append(f"<tr class='meta'><th>{e(label)}</th>{cells}</tr>")
    for label, vals in _metric_rows([r.metrics for r in runs]):
        cells = "".join(f"<td>{e(v)}</td>" for v in vals)
        body.append(f"<tr><th>{e(label)}</th>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
thead th { background: #f0f0f0; text-align: center; }
tbody th { text-align: left; font-weight: normal; }
tr.meta td, tr.meta th { background: #fafafa; text-align: left; }
section { margin-top: 2em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; }
"""


def _page(title: str, runs: list[_Run], figures: dict[str, go.Figure]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style>",
        # plotly.js, inlined once for every figure below: the page works offline
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Generated {e(_dt.datetime.now().isoformat(timespec='seconds'))}; "
        f"{len(runs)} run(s). Latencies follow vLLM's serving-benchmark definitions.</p>",
        "<section><h2>Key metrics</h2>", _table_html(runs), "</section>",
    ]
    for key, fig in figures.items():
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                          config={"displaylogo": False})
        parts.append(f"<section id='{key}'>{div}</section>")
    parts.append("<section><h2>Full metrics</h2>")
    for run in runs:
        parts.append(f"<details><summary>{e(run.label)}</summary>"
                     f"<pre>{e(format_metrics(run.metrics))}</pre></details>")
    parts.append("</section></body></html>")
    return "\n".join(parts)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary sibling and `os.replace`: readers never see a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _has_metrics(metrics: dict) -> bool:
    return all(k in metrics for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "kv", "percentiles"))


def _prepare(results: Sequence[RunResult], slo: SLO | None) -> list[_Run]:
    runs: list[_Run] = []
    seen: dict[str, int] = {}
    for r in results:
        check_columns(r)
        base = r.name
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base} #{seen[base]}"
        metrics = r.metrics if (slo is None and _has_metrics(r.metrics)) else compute_metrics(r, slo)
        runs.append(_Run(label=label, result=r, metrics=metrics, t0=_run_origin(r)))
    return runs


def write_report(results: Sequence[RunResult], out_html: str | Path, png_dir: str | Path | None = None,
                 title: str = DEFAULT_TITLE, slo: SLO | None = None) -> Path:
    """Write the HTML report comparing `results` (one table column and one line per run).

    Stored metrics are used when present and no `slo` is given; otherwise they are computed.
    With `png_dir`, every figure is also written there as `<figure>.png` (needs kaleido and a
    Chrome/Chromium; checked first, so a missing browser fails before anything is written).
    """
    if not results:
        raise ValueError("write_report: no runs given")
    if png_dir is not None and not png_export_available():
        raise RuntimeError(PNG_HELP)
    runs = _prepare(results, slo)
    figures = build_figures(runs)
    out = Path(out_html)
    _atomic_write_text(out, _page(title, runs, figures))
    if png_dir is not None:
        _export_pngs(figures, Path(png_dir))
    return out


def main_report(run_dirs: list[str], out: str, png_dir: str | None = None, slo: SLO | None = None) -> Path:
    """`sagellm report RUN_DIR... -o OUT [--png DIR] [--slo-...]`: read runs, write the report."""
    if not run_dirs:
        raise ValueError("sagellm report: give at least one run directory")
    results = [RunResult.read(d) for d in run_dirs]
    for r in results:
        if slo is not None or not _has_metrics(r.metrics):
            r.metrics = compute_metrics(r, slo)
    names = ", ".join(r.name for r in results)
    return write_report(results, out, png_dir=png_dir, title=f"{DEFAULT_TITLE}: {names}")
