"""How far apart are two profiles of one engine? Their grids matched shape by shape, and their fits.

The calibrated model takes its level from one profile, so whatever the machine did while it was
measured (power state, clocks, what ran before) is in every prediction. Two profiles of the same
machine minutes apart bound how well any step time can be known: near saturation a validation's
tail latency moves 25-30 points per 1% of step time (README, validation), so this drift is a floor
under its error. Across machines, the same comparison says how far one host's profile is from
another's.

For every iteration shape both grids timed, B's time over A's, summarised per kind of step (median,
10th and 90th percentile), in three parts: the step's wall time (what the calibrated model fits),
its device time (CUDA events; graph replays and the profiler's timed eager samples) and its host
launch time. Kept apart, they say whether two profiles differ on the card or on the host's CPU.
Then both profiles' fits (`CalibratedCostModel`) on a few reference steps, and their serving-loop
factors.

    python -m benchmarks.profile_drift A.json B.json [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from backends.calibrated import CalibratedCostModel
from backends.cost_model import BatchShape
from backends.profile import Profile, ShapeSample

# Decode batches grouped as the graph buckets spread them: latency-bound, small, mid, large.
DECODE_BINS = ((1, 4), (5, 32), (33, 128), (129, 1 << 30))
REFERENCE_STEPS = {
    "decode 1 x 648": BatchShape([], 1, 648),
    "decode 64 x 600": BatchShape([], 64, 64 * 600),
    "decode 256 x 800": BatchShape([], 256, 256 * 800),
    "prefill 2048": BatchShape([(2048, 0)], 0, 0),
    "1824 prefill + 224 decodes x 512": BatchShape([(1824, 0)], 224, 224 * 512),
}


def _key(s: ShapeSample) -> tuple:
    return (s.prefill, s.num_decode, s.decode_context, s.decode_max_context)


def _group(s: ShapeSample) -> str:
    if s.kind != "decode":
        return s.kind
    lo, hi = next(b for b in DECODE_BINS if b[0] <= s.num_decode <= b[1])
    return f"decode {lo}-{hi}" if hi < 1 << 30 else f"decode {lo}+"


PARTS = ("median_s", "device_s", "launch_s")  # wall, device, host launch


def _spread(rs: list[float]) -> dict:
    return {
        "n": len(rs),
        "median": float(np.median(rs)),
        "p10": float(np.percentile(rs, 10)),
        "p90": float(np.percentile(rs, 90)),
    }


def compare(a: Profile, b: Profile) -> dict:
    """B against A: per-shape ratios by kind, and both fits on the reference steps."""
    if a.header.model_config != b.header.model_config or a.header.dtype != b.header.dtype:
        raise ValueError(
            f"profiles of different models or dtypes: {a.header.model}/{a.header.dtype} against "
            f"{b.header.model}/{b.header.dtype}"
        )
    theirs = {_key(s): s for s in b.samples}
    pairs = [(s, theirs[_key(s)]) for s in a.samples if _key(s) in theirs]
    if not pairs:
        raise ValueError("the two profiles time no shape in common (different grids)")
    groups = ["all", *sorted({_group(s) for s, _ in pairs})]
    shapes: dict[str, dict[str, dict]] = {}
    for g in groups:
        shapes[g] = {}
        for part in PARTS:
            rs = [
                getattr(t, part) / getattr(s, part)
                for s, t in pairs
                if (g == "all" or _group(s) == g) and getattr(s, part) and getattr(t, part)
            ]
            if rs:
                shapes[g][part] = _spread(rs)
    fits = [CalibratedCostModel(profile=p) for p in (a, b)]
    return {
        "a": {"device": a.header.device, "date": a.header.date, "command": a.header.command},
        "b": {"device": b.header.device, "date": b.header.date, "command": b.header.command},
        "shapes": shapes,
        "fit_ms": {
            name: [1e3 * m.stage_time(shape) for m in fits] for name, shape in REFERENCE_STEPS.items()
        },
        "eager_scale": [m.eager_scale for m in fits],
    }


def format_comparison(c: dict) -> str:
    lines = [f"A: {c['a']['device']}, {c['a']['date']}", f"B: {c['b']['device']}, {c['b']['date']}"]
    lines.append("B/A over the shapes both grids timed: median [p10, p90] (n)")
    lines.append(f"{'':16s} {'wall':>27s} {'device':>27s} {'host launch':>27s}")
    for g, parts in c["shapes"].items():
        cells = [
            f"{r['median']:.4f} [{r['p10']:.3f}, {r['p90']:.3f}] ({r['n']:3d})" if r else "-"
            for r in (parts.get(p) for p in PARTS)
        ]
        lines.append(f"{g:16s} " + " ".join(f"{x:>27s}" for x in cells))
    lines.append(f"{'fitted step (ms)':34s} {'A':>8s} {'B':>8s} {'B/A':>7s}")
    for name, (ta, tb) in c["fit_ms"].items():
        lines.append(f"{name:34s} {ta:8.3f} {tb:8.3f} {tb / ta:7.4f}")
    ea, eb = c["eager_scale"]
    lines.append(f"serving loop's factor on eager steps: A {ea:.3f}, B {eb:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="profile A (the reference)")
    ap.add_argument("b", help="profile B")
    ap.add_argument("--out", default=None, help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    c = compare(Profile.load(args.a), Profile.load(args.b))
    print(format_comparison(c))
    if args.out:
        Path(args.out).write_text(json.dumps(c, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
