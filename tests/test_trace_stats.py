"""Trace statistics on a hand-made trace whose answers are worked out in the comments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from traces.loaders import bundled, load_trace
from traces.schema import Trace
from traces.stats import format_stats, plot_stats, prefix_hit_tokens, trace_stats


def _toy() -> Trace:
    # Block of 4 tokens; hashes chained (Mooncake style), ceil(prompt / 4) ids each.
    return Trace(
        arrival=[0.0, 1.0, 3.0, 6.0],
        prompt_len=[10, 20, 30, 10],
        output_len=[1, 2, 3, 4],
        prefix_hashes=[(1, 2, 3), (1, 2, 5, 6, 7), (1, 2, 5, 8, 9, 10, 11, 12), (1, 2, 3)],
        hash_block_tokens=4,
        name="toy",
    )


def test_prefix_hits_by_hand() -> None:
    # r0: nothing seen -> 0. r1: 1, 2 seen, 5 not -> 2 blocks = 8 tokens. r2: 1, 2, 5 seen -> 12.
    # r3: 1, 2, 3 seen -> 12 tokens, capped at its 10-token prompt (last block is partial).
    assert prefix_hit_tokens(_toy()).tolist() == [0, 8, 12, 10]
    # Reuse is a contiguous prefix: a seen id after an unseen one does not count.
    broken = Trace(arrival=[0, 1], prompt_len=[8, 8], output_len=[1, 1], prefix_hashes=[(1, 2), (3, 2)],
                   hash_block_tokens=4)  # fmt: skip
    assert prefix_hit_tokens(broken).tolist() == [0, 0]


def test_trace_stats_known_answers() -> None:
    s = trace_stats(_toy())
    assert s["count"] == 4 and s["duration_s"] == 6.0
    assert s["mean_rate_rps"] == pytest.approx(0.5)  # 3 gaps over 6 s
    # gaps 1, 2, 3: mean 2, population std sqrt(2/3)
    assert s["interarrival_cv"] == pytest.approx(math.sqrt(2 / 3) / 2)
    # prompts sorted 10, 10, 20, 30 (linear-interpolated percentiles)
    assert (s["prompt_len_mean"], s["prompt_len_p50"], s["prompt_len_p90"]) == pytest.approx(
        (17.5, 15.0, 27.0)
    )
    assert (s["prompt_len_p99"], s["prompt_len_max"]) == (pytest.approx(29.7), 30)
    assert (s["output_len_mean"], s["output_len_p50"], s["output_len_max"]) == (2.5, 2.5, 4)
    assert s["prompt_tokens_total"] == 70 and s["output_tokens_total"] == 10
    assert s["unique_hashes"] == 11 and s["hash_block_tokens"] == 4
    assert s["prefix_hit_fraction"] == pytest.approx(30 / 70)
    assert s["requests_with_prefix_hit"] == 0.75
    json.dumps(s)  # plain JSON-friendly values


def test_stats_degenerate_traces() -> None:
    one = Trace(arrival=[0.0], prompt_len=[5], output_len=[7])
    s = trace_stats(one)
    assert s["count"] == 1 and s["mean_rate_rps"] is None and s["interarrival_cv"] is None
    assert "prefix_hit_fraction" not in s and s["prompt_len_p99"] == 5.0
    burst = trace_stats(Trace(arrival=[0.0, 0.0], prompt_len=[1, 1], output_len=[1, 1]))
    assert burst["mean_rate_rps"] is None and burst["interarrival_cv"] is None
    text = format_stats(s)
    assert "mean arrival rate (req/s)" in text and " -" in text


def test_format_stats_table() -> None:
    text = format_stats(trace_stats(_toy()))
    lines = text.splitlines()
    row = {ln.split("  ")[0]: ln.split("  ", 1)[1].strip() for ln in lines}
    assert row["requests"] == "4"
    assert row["mean arrival rate (req/s)"] == "0.5"
    assert row["ideal prefix-cache hit (token fraction)"] == "0.4286"
    assert row["prompt length"] == "mean 17.5  p50 15  p90 27  p99 29.7  max 30"
    w = max(len(k) for k in row)  # one aligned value column after the longest label
    assert all(ln[w : w + 2] == "  " and ln[w + 2] != " " for ln in lines)


def test_skipped_rows_are_reported(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,5,0\n2023-11-16 18:15:47.1,5,5\n"
    )
    s = trace_stats(load_trace(p, skip_bad_rows=True))
    assert s["skipped_rows"] == 1 and "bad rows skipped on load" in format_stats(s)


def test_plot_stats_self_contained_html(tmp_path: Path) -> None:
    out = plot_stats(bundled("mooncake_conv"), tmp_path / "plot.html")
    html = out.read_text()
    assert "<html>" in html[:100] and "</html>" in html[-100:] and "mooncake_conv_slice" in html
    assert "arrival rate over time" in html and "output length CDF" in html
    assert 'src="https://cdn' not in html and len(html) > 1_000_000  # plotly.js inlined
