"""The validation report: figures, the self-contained HTML page, PNGs, errors.json and iterations.csv.

`write_validation_report` writes the report directory a validation or a recomputation produces (its
layout is in `benchmarks.validate`'s docstring): the predicted-vs-measured table with signed relative
errors, per-request TTFT/E2E and per-iteration scatters, iteration time over the run, the profile fit,
the mirror check, plus `benchmarks.report.write_report` of both runs side by side.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from backends.calibrated import CalibratedCostModel
from benchmarks.report import PNG_HELP, png_export_available, write_report
from benchmarks.validation_errors import per_request, previous_errors

if TYPE_CHECKING:
    from benchmarks.validate import ValidationResult

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
thead th { background: #f0f0f0; text-align: center; }
tbody th { text-align: left; font-weight: normal; }
td.ok { background: #e8f6e8; } td.bad { background: #fbe5e5; }
tr.headline th { font-weight: bold; }
section { margin-top: 2em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; }
"""


def _fmt(v, fmt: str) -> str:
    if v is None:
        return "—"
    if fmt == "d":
        return format(int(v), "d")
    return format(v, fmt)


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=480,
        legend=dict(orientation="h", y=-0.2),
        margin=dict(t=60, b=40),
    )
    return fig


def _thin(n: int, max_points: int = 20000) -> np.ndarray:
    return np.arange(n) if n <= max_points else np.unique(np.linspace(0, n - 1, max_points).astype(np.int64))


def _scatter(
    x_meas: np.ndarray,
    y_pred: np.ndarray,
    title: str,
    unit: str,
    groups: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> go.Figure:
    fig = go.Figure()
    ok = np.isfinite(x_meas) & np.isfinite(y_pred)
    kinds = [None] if groups is None else [k for k in ("decode", "prefill", "mixed") if (groups == k).any()]
    for i, k in enumerate(kinds):
        sel = ok if k is None else ok & (groups == k)
        idx = np.flatnonzero(sel)[_thin(int(sel.sum()))]
        text = None if ids is None else [f"request {int(r)}" for r in ids[idx]]
        fig.add_trace(
            go.Scattergl(
                x=x_meas[idx],
                y=y_pred[idx],
                mode="markers",
                name=k or "requests",
                text=text,
                marker=dict(size=5, opacity=0.6, color=("#1f77b4", "#d62728", "#2ca02c")[i]),
            )
        )
    if ok.any():
        lo = float(min(x_meas[ok].min(), y_pred[ok].min()))
        hi = float(max(x_meas[ok].max(), y_pred[ok].max()))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="predicted = measured",
                line=dict(color="#888", dash="dash"),
            )
        )
        if lo > 0:
            fig.update_xaxes(type="log")
            fig.update_yaxes(type="log")
    return _layout(fig, title, f"measured ({unit})", f"predicted ({unit})")


def _iteration_figure(table: dict[str, np.ndarray]) -> go.Figure:
    t0 = float(table["start"].min()) if table["start"].size else 0.0
    idx = _thin(len(table["start"]))
    x = table["start"][idx] - t0
    fig = go.Figure()
    for name, color in (("measured", "#1f77b4"), ("predicted", "#d62728")):
        fig.add_trace(
            go.Scattergl(
                x=x,
                y=table[f"{name}_s"][idx] * 1e3,
                mode="markers",
                name=name,
                marker=dict(size=4, color=color, opacity=0.7),
            )
        )
    return _layout(
        fig,
        "Iteration time over the run: measured vs predicted for the same batch",
        "engine time since first iteration (s)",
        "iteration time (ms)",
    )


def _profile_fit_figure(cost: CalibratedCostModel) -> go.Figure:
    rows = cost.fit_report()["samples"]
    m = np.array([r["measured_s"] for r in rows]) * 1e3
    p = np.array([r["predicted_s"] for r in rows]) * 1e3
    kinds = np.array([r["kind"] for r in rows], dtype=object)
    fig = _scatter(m, p, "Profile fit: step time of every profiled shape, fitted vs measured", "ms", kinds)
    return fig


def build_validation_figures(result: ValidationResult) -> dict[str, go.Figure]:
    pr = per_request(result.measured, result.predicted)
    t = result.iterations
    return {
        "ttft_scatter": _scatter(
            pr["measured_ttft"] * 1e3,
            pr["predicted_ttft"] * 1e3,
            "TTFT per request: predicted vs measured",
            "ms",
            ids=pr["id"],
        ),
        "e2e_scatter": _scatter(
            pr["measured_e2e"] * 1e3,
            pr["predicted_e2e"] * 1e3,
            "E2E latency per request: predicted vs measured",
            "ms",
            ids=pr["id"],
        ),
        "iteration_time": _iteration_figure(t),
        "iteration_scatter": _scatter(
            t["measured_s"] * 1e3,
            t["predicted_s"] * 1e3,
            "Iteration time per measured iteration: predicted vs measured",
            "ms",
            t["kind"],
        ),
        "profile_fit": _profile_fit_figure(result.cost),
    }


def _error_table_html(errors: dict) -> str:
    e = html.escape
    before = previous_errors(errors)
    body = []
    for r in errors["metrics"]:
        err = "—" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        cls = "" if r["within_target"] is None else (" class='ok'" if r["within_target"] else " class='bad'")
        row_cls = " class='headline'" if r["headline"] else ""
        old = ""
        if before is not None:
            b = before.get((r["metric"], r["stat"]))
            old = f"<td>{e('—' if b is None else format(b, '+.1%'))}</td>"
        body.append(
            f"<tr{row_cls}><th>{e(r['label'])}</th><td>{e(_fmt(r['measured'], r['format']))}</td>"
            f"<td>{e(_fmt(r['predicted'], r['format']))}</td><td{cls}>{e(err)}</td>{old}</tr>"
        )
    head = "<th>error before recompute</th>" if before is not None else ""
    return (
        "<table><thead><tr><th>metric</th><th>measured (engine)</th><th>predicted (simulator)</th>"
        f"<th>signed relative error</th>{head}</tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


def _repeats_html(rp: dict | None) -> str:
    """The headline figures of every measured run of the slice, their spread and the prediction."""
    if not rp:
        return ""
    e = html.escape
    n = rp["runs"]
    rows = []
    for x in rp["rows"]:
        vals = "".join(f"<td>{e(_fmt(v, '.2f'))}</td>" for v in x["measured"])
        spread = "—" if x["spread"] is None else f"{x['spread']:.1%}"
        err = "—" if x["rel_error_vs_median"] is None else f"{x['rel_error_vs_median']:+.1%}"
        inside = {True: "yes", False: "no", None: "—"}[x["predicted_within_range"]]
        rows.append(
            f"<tr><th>{e(x['label'])}</th>{vals}<td>{e(spread)}</td><td>{e(_fmt(x['predicted'], '.2f'))}</td>"
            f"<td>{e(err)}</td><td>{inside}</td></tr>"
        )
    runs = "".join(f"<th>run {i + 1}</th>" for i in range(n))
    return (
        f"<section><h2>The slice served {n} times</h2><p>How much the engine's own headline figures move "
        "between runs of the same slice, and where the prediction falls (the table above compares run 1)."
        f"</p><table><thead><tr><th>metric</th>{runs}<th>spread (max - min) / median</th><th>predicted</th>"
        "<th>error vs median run</th><th>prediction within the runs' range</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></section>"
    )


def _sampling_html(sp: dict | None) -> str:
    """Each headline latency percentile's bootstrap interval over the slice's requests, and the prediction."""
    if not sp:
        return ""
    e = html.escape
    rows = []
    for r in sp["rows"]:
        if r["measured"] is None:
            continue
        lo, hi = _fmt(r["low"], ".2f"), _fmt(r["high"], ".2f")
        band = f"{lo} – {hi} ({r['rel_low']:+.1%}, {r['rel_high']:+.1%})"
        err = "—" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        where = "—" if r["inside"] is None else "inside" if r["inside"] else f"outside by {r['beyond']:.1%}"
        need = r.get("requests_for_target")
        rows.append(
            f"<tr><th>{e(r['label'])}</th><td>{e(_fmt(r['measured'], '.2f'))}</td><td>{e(band)}</td>"
            f"<td>{e(_fmt(r['predicted'], '.2f'))}</td><td>{e(err)}</td><td>{e(where)}</td>"
            f"<td>{'—' if not need else f'~{need:,}'}</td></tr>"
        )
    n = max((r["n"] for r in sp["rows"]), default=0)
    return (
        f"<section><h2>Request sampling</h2><p>The {sp['level']:.0%} interval of each measured percentile "
        f"over {sp['draws']} bootstrap resamples of the {n} finished requests: how much of an error the "
        "slice's size alone allows. Requests of one run queue behind each other, so the run's noise is "
        "larger (the repeats above show more of it).</p><table><thead><tr><th>metric</th><th>measured</th>"
        "<th>interval (ms)</th><th>predicted</th><th>error</th><th>prediction</th>"
        f"<th>requests for an interval within ±{sp.get('target', 0.05):.0%}</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></section>"
    )


def _sensitivity_html(sens: dict | None) -> str:
    """Each headline figure's error with every predicted step 1% faster and slower, and less the
    part the run's own step bias explains."""
    if not sens:
        return ""
    e = html.escape
    bias = "n/a" if sens["step_bias"] is None else f"{sens['step_bias']:+.1%}"
    rows = []
    for r in sens["rows"]:
        fixed = "—" if r["without_step_bias"] is None else f"{r['without_step_bias']:+.1%}"
        rows.append(
            f"<tr><th>{e(r['label'])}</th><td>{r['rel_error']:+.1%}</td><td>{r['at_faster']:+.1%}</td>"
            f"<td>{r['at_slower']:+.1%}</td><td>{r['points_per_percent']:+.1f}</td><td>{e(fixed)}</td></tr>"
        )
    d = sens["delta"]
    return (
        "<section><h2>Step-time sensitivity</h2><p>The slice simulated again with every predicted step "
        f"{d:.0%} faster and {d:.0%} slower: how many points of each headline error one percent of step "
        f"time is worth at this operating point (queueing and batching amplify it), and the error less "
        f"what the run's own step bias explains (its steps summed {e(bias)} against measured): the slice "
        "simulated once more with every step scaled so that they sum to the measured time.</p>"
        "<table><thead><tr><th>metric</th><th>error</th>"
        f"<th>steps {d:.0%} faster</th><th>steps {d:.0%} slower</th><th>points per 1%</th>"
        "<th>without the step bias</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def _summary_table_html(title: str, d: dict[str, dict]) -> str:
    e = html.escape
    rows = []
    for k, s in d.items():
        if not isinstance(s, dict) or "n" not in s:
            continue
        cells = [_fmt(s["n"], "d")] + [
            _fmt(s.get(x), ".1%") for x in ("median_abs_rel_error", "p90_abs_rel_error", "max_abs_rel_error")
        ]
        cells.append("—" if s.get("mean_signed_rel_error") is None else f"{s['mean_signed_rel_error']:+.1%}")
        rows.append(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<table><thead><tr><th>{e(title)}</th><th>n</th><th>median |err|</th><th>P90 |err|</th>"
        "<th>max |err|</th><th>mean signed err</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _path_table_html(rows: list[dict], top: int = 15) -> str:
    """Step time per launch path (decode graph of B rows, step graph of T tokens, eager by tokens)."""
    e = html.escape
    body = "".join(
        f"<tr><th>{e(r['path'])}</th><td>{r['n']}</td><td>{1e3 * r['measured_s']:.0f}</td>"
        f"<td>{1e3 * r['predicted_s']:.0f}</td><td>{1e3 * (r['predicted_s'] - r['measured_s']):+.0f}</td>"
        f"<td>{_fmt(r['rel_error'], '+.1%')}</td><td>{_fmt(r['median_rel_error'], '+.1%')}</td></tr>"
        for r in rows[:top]
    )
    rest = len(rows) - top
    return (
        "<table><thead><tr><th>step time by launch path</th><th>steps</th><th>measured ms</th>"
        "<th>predicted ms</th><th>difference ms</th><th>error of the sum</th><th>median step error</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
        + (f"<p>The {rest} paths with smaller differences are in errors.json.</p>" if rest > 0 else "")
    )


def _launch_table_html(rows: list[dict] | None, top: int = 12) -> str:
    """The run's host launch per step against the profile's, by launch path (`launch_ratios`)."""
    if not rows:
        return ""
    e = html.escape
    body = "".join(
        f"<tr><th>{e(r['path'])}</th><td>{r['n']}</td><td>{1e6 * r['measured_median_s']:.0f}</td>"
        f"<td>{1e6 * r['predicted_median_s']:.0f}</td><td>{r['median_ratio']:.2f}x</td></tr>"
        for r in rows[:top]
    )
    return (
        "<p>The host's part: a step's launch (staging its inputs, then the graph's replay or Python's "
        "kernel launches) as this run measured it, against the profile's launch line. The card's times "
        "repeat across hosts far better than the host's do.</p>"
        "<table><thead><tr><th>host launch by launch path</th><th>steps</th><th>measured us (median)</th>"
        "<th>profile us (median)</th><th>median ratio</th></tr></thead><tbody>" + body + "</tbody></table>"
    )


def _page(result: ValidationResult, figures: dict[str, go.Figure]) -> str:
    e = html.escape
    er = result.errors
    m = result.measured.meta
    cm = result.cost.describe()
    head = er["headline"]
    verdict = (
        "—"
        if head["max_abs_rel_error"] is None
        else f"max |error| on the headline metrics {head['max_abs_rel_error']:.1%} "
        f"(target {er['target']:.0%}): {'all' if head['all_within_target'] else 'not all'} within target"
    )
    mirror_rows = "".join(
        f"<tr><th>{e(k)}</th><td>{e(str(a))}</td><td>{e(str(b))}</td></tr>"
        for k, (a, b) in er["mirror"].items()
    )
    cap = er.get("capacity")
    cap_text = (
        ""
        if not cap
        else (
            f"<p>Load: {cap['load']:.0%} of the capacity measured by the {e(cap['source'])} "
            f"({cap['request_throughput']:.3f} req/s), i.e. {cap['rate']:.3f} req/s."
            + (
                f" Simulated, the same capacity run gives {cap['simulated_request_throughput']:.3f} req/s "
                f"({cap['simulated_rel_error']:+.1%}), so the simulated replica ran at "
                f"{cap['simulated_load']:.1%} of its own capacity: near saturation, queueing (and TTFT) "
                "turns on that difference.</p>"
                if "simulated_request_throughput" in cap
                else "</p>"
            )
        )
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>Validation: {e(str(m.get('trace')))}</title><style>{_CSS}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>Simulator vs engine: {e(str(m.get('trace')))}</h1>",
        f"<p>Generated {e(_dt.datetime.now().isoformat(timespec='seconds'))}. {len(result.trace)} requests; "
        f"engine on {e(str(m.get('device')))} ({e(str(m.get('model')))}, {e(str(m.get('dtype')))}); "
        f"simulator with cost model <b>{e(cm['name'])}</b> fitted to the profile of {e(cm['device'])} "
        f"({e(str(cm['profile'] or 'measured on the spot'))}, {e(cm['profile_date'])}).</p>",
        cap_text,
        f"<p><b>{e(verdict)}</b></p>",
        "<p>Signed relative error = (predicted - measured) / measured. Latencies follow vLLM's "
        "serving-benchmark definitions. <a href='side_by_side.html'>Side-by-side run report</a> (CDFs, "
        "throughput, KV use and batch size over time).</p>",
        "<section><h2>Predicted vs measured</h2>",
        _error_table_html(er),
        "</section>",
        _repeats_html(er.get("repeats")),
        _sampling_html(er.get("sampling")),
        _sensitivity_html(er.get("sensitivity")),
        "<section><h2>Per request and per iteration</h2>",
        _summary_table_html("per request", er["per_request"]),
        _summary_table_html("per iteration (scheduler + step)", er["iterations"]),
        _path_table_html(er["iterations"].get("by_path", [])),
        _launch_table_html(er["iterations"].get("host_launch")),
        "</section>",
        "<section><h2>Mirror check</h2><table><thead><tr><th>field</th><th>engine</th><th>simulator</th></tr>"
        f"</thead><tbody>{mirror_rows}</tbody></table></section>",
    ]
    for key, fig in figures.items():
        div = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}", config={"displaylogo": False}
        )
        parts.append(f"<section id='{key}'>{div}</section>")
    notes = er.get("notes") or []
    if notes:
        parts.append(
            "<section><h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul></section>"
        )
    parts.append(f"<section><h2>Profile fit</h2><pre>{e(result.cost.format_fit_report())}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def jsonable(v: object) -> object:
    """`v` with numpy scalars and arrays as Python values and NaN/inf as None (undefined), for JSON."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def _write_iterations_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    """Seconds with 10 significant digits: 0.1 us or finer in runs under 1,000 s, and a quarter
    smaller than full `repr` (stored runs travel to the GPU machines under a size limit)."""
    cols = list(table)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        floats = {c for c in cols if table[c].dtype.kind == "f"}
        for i in range(len(table["start"])):
            w.writerow([format(float(table[c][i]), ".10g") if c in floats else table[c][i] for c in cols])


def write_validation_report(
    result: ValidationResult,
    out_dir: str | Path,
    png: bool | str = "auto",
    write_measured: bool = True,
    write_profile: bool = True,
) -> Path:
    """Write the report directory (see `benchmarks.validate`'s docstring); returns it. png: True (required),
    False (skip) or 'auto' (when kaleido and a browser are available; a note otherwise).
    write_measured=False leaves an existing measured/ run as it is (a recomputed report), and
    write_profile=False its profile.json (recomputed from that file: stored runs of one machine
    share one profile through links)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    do_png = png is True or (png == "auto" and png_export_available())
    if png is True and not png_export_available():
        raise RuntimeError(PNG_HELP)
    if png == "auto" and not do_png:
        result.errors["notes"].append("PNG export skipped: " + PNG_HELP)
    if write_measured:
        result.measured.write(out / "measured")
    result.predicted.write(out / "predicted")
    if write_profile:
        result.cost.profile.save(out / "profile.json")
    _write_iterations_csv(out / "iterations.csv", result.iterations)
    figures = build_validation_figures(result)
    write_report(
        [result.measured, result.predicted],
        out / "side_by_side.html",
        png_dir=(out / "png" / "side_by_side") if do_png else None,
        title=f"Measured vs predicted: {result.measured.meta.get('trace')}",
    )
    (out / "index.html").write_text(_page(result, figures), encoding="utf-8")
    if do_png:
        png_dir = out / "png"
        png_dir.mkdir(parents=True, exist_ok=True)
        try:
            pio.write_images(
                list(figures.values()), [png_dir / f"{k}.png" for k in figures], width=1100, height=550
            )
        except Exception as e:
            raise RuntimeError(f"PNG export to {png_dir} failed: {e}. {PNG_HELP}") from e
    (out / "errors.json").write_text(json.dumps(jsonable(result.errors), indent=2, allow_nan=False))
    result.out_dir = out
    return out
