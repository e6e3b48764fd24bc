"""One check for "this fast path gives the very same run": the simulator's exact fast paths are
pinned to their slow forms by running both and comparing every recorded value bit for bit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from backends.cost_model import ParallelLayout
from sim.results import RunResult
from traces.schema import Trace


def assert_identical_runs(a: RunResult, b: RunResult) -> None:
    """Every per-request column, the ITL histogram (counts, total, n), the iteration count, the
    simulated end time and the KV statistics are equal, to the last bit."""
    for k, v in a.requests.items():
        assert np.array_equal(v, b.requests[k], equal_nan=v.dtype.kind == "f"), k
    assert np.array_equal(a.itl.counts, b.itl.counts)
    assert a.itl.total == b.itl.total and a.itl.n == b.itl.n
    for k in ("iterations", "sim_end", "kv"):
        assert a.meta[k] == b.meta[k], k


def pipelined_case(cost, pp: int, long: bool, rate: float, seed: int) -> Trace:
    """Set the `linear_cost` fixture up for a pipeline of `pp` stages whose decode time grows with the
    context, and return the workload the fast-path tests share: 250 long prompts (`long`) or 300
    short-output requests at `rate` req/s."""
    from tests.test_sim_pipeline_plan import long_prompt_trace
    from tests.test_sim_run_past_finish import short_output_trace

    cost.per_ctx = 1e-6
    cost.layout = ParallelLayout(1, pp)
    return long_prompt_trace(250, rate, seed) if long else short_output_trace(300, rate, seed)


@contextlib.contextmanager
def counting_calls(owner: object, name: str) -> Iterator[list[int]]:
    """Count the calls to `owner.name` (a module function, a class's method or an object's bound
    one) inside the block, in the yielded one-element list; the original is back afterwards. The
    fast-path tests use it to show a fast path saves the work it claims to."""
    original = getattr(owner, name)
    calls = [0]

    def counting(*args, **kw):
        calls[0] += 1
        return original(*args, **kw)

    setattr(owner, name, counting)
    try:
        yield calls
    finally:
        setattr(owner, name, original)
