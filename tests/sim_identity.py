"""One check for "this fast path gives the very same run": the simulator's exact fast paths are
pinned to their slow forms by running both and comparing every recorded value bit for bit."""

from __future__ import annotations

import numpy as np

from sim.results import RunResult


def assert_identical_runs(a: RunResult, b: RunResult) -> None:
    """Every per-request column, the ITL histogram (counts, total, n), the iteration count, the
    simulated end time and the KV statistics are equal, to the last bit."""
    for k, v in a.requests.items():
        assert np.array_equal(v, b.requests[k], equal_nan=v.dtype.kind == "f"), k
    assert np.array_equal(a.itl.counts, b.itl.counts)
    assert a.itl.total == b.itl.total and a.itl.n == b.itl.n
    for k in ("iterations", "sim_end", "kv"):
        assert a.meta[k] == b.meta[k], k
