"""The engine's own spread over validation runs of one slice made in several processes, and where the
prediction falls against it.

`validate --repeats N` serves a slice N times in one process. Runs made in separate processes (or
calls of the device tool) on the same machine add what differs between processes: KV pool placement,
graph capture, allocator state. This gathers the measured runs of several report directories that
replayed the same slice at the same arrival times, checks that they did, and compares the first
directory's prediction against all of them (`repeat_summary`, as one `validate --repeats` does):

    python -m benchmarks.repeat_spread runs/val/az3k runs/val/az3k_b [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.validation_errors import (
    DEFAULT_TARGET,
    error_rows,
    format_repeats,
    repeat_summary,
    repeated_runs,
)
from sim.results import RunResult

SAME_SLICE = ("prompt_tokens", "output_tokens")


def _read_errors(run: Path) -> dict:
    try:
        return json.loads((run / "errors.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run / 'errors.json'}: not found; {run} is not a validation report directory"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{run / 'errors.json'}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _check_same_slice(first: RunResult, other: RunResult, where: Path, base: Path) -> None:
    """The same requests at the same arrival times, or the runs are not repeats of one another."""
    a, b = first.requests, other.requests
    if len(a["arrival"]) != len(b["arrival"]):
        raise ValueError(
            f"{where}/measured: {len(b['arrival'])} requests, {base}/measured has {len(a['arrival'])}; "
            "not the same slice"
        )
    for col in SAME_SLICE:
        bad = np.flatnonzero(a[col] != b[col])
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{where}/measured/requests.csv: request {i} has {col} {b[col][i]}, {base} has {a[col][i]}; "
                "not the same slice"
            )
    bad = np.flatnonzero(~np.isclose(a["arrival"], b["arrival"], rtol=1e-9, atol=1e-9))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where}/measured/requests.csv: request {i} arrives at {b['arrival'][i]:.6f} s, in {base} at "
            f"{a['arrival'][i]:.6f} s; not the same arrivals (same --rate or --load and capacity?)"
        )


def gather(dirs: list[str | Path], target: float = DEFAULT_TARGET) -> dict:
    """Every measured run of `dirs` (a directory's `validate --repeats` runs included), checked to be
    one slice, against the first directory's prediction. Adds `predictions_max_rel_diff`: how far the
    other directories' own predictions are from the first's on the headline figures (0 when the
    profile and the engine's KV block count were the same)."""
    if not dirs:
        raise ValueError("repeat_spread: give at least one report directory")
    paths = [Path(d) for d in dirs]
    if len({p.resolve() for p in paths}) < len(paths):
        raise ValueError("repeat_spread: a directory is given twice; its runs would count twice")
    base = paths[0]
    first = RunResult.read(base / "measured")
    predicted = RunResult.read(base / "predicted").metrics
    runs: list[dict] = []
    diffs: list[float] = []
    for p in paths:
        measured = first if p is base else RunResult.read(p / "measured")
        if p is not base:
            _check_same_slice(first, measured, p, base)
            other = RunResult.read(p / "predicted").metrics
            diffs += [abs(r["rel_error"]) for r in error_rows(other, predicted, target)
                      if r["headline"] and r["rel_error"] is not None]  # fmt: skip
        errors = _read_errors(p)
        runs += repeated_runs(errors["repeats"]) if errors.get("repeats") else [measured.metrics]
    summary = repeat_summary(runs, predicted, target)
    summary["dirs"] = [str(p) for p in paths]
    summary["predictions_max_rel_diff"] = max(diffs) if diffs else 0.0
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.repeat_spread", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="validation report directories of one slice")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET)
    p.add_argument("--json", help="also write the summary here")
    a = p.parse_args(argv)
    try:
        s = gather(a.dirs, a.target)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(s['dirs'])} directories; the prediction is {s['dirs'][0]}'s")
    print("\n".join(format_repeats(s)))
    print("each run, in order, and the prediction:")
    for x in s["rows"]:
        vals = " / ".join("n/a" if v is None else f"{v:.1f}" for v in x["measured"])
        print(f"  {x['label']:<32} {vals}   predicted {x['predicted']:.1f}")
    if len(s["dirs"]) > 1:
        print(
            f"the other directories' predictions differ from it by up to {s['predictions_max_rel_diff']:.2%}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
