"""Where the benchmark scripts put their figures: one JSON file per run, named after the card.

`benchmarks/results/<stem>_<card>.json` unless a path is given, so that runs on different cards sit
side by side and a re-run on the same card replaces its file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def card_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; unknown names become a lower-case slug."""
    m = re.search(r"(H100|H200|A100|L40S|L4|A10G|B200|GH200)", name, re.I)
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", name.lower())).lower()


def result_path(stem: str, card: str, given: str | None = None) -> Path:
    return Path(given) if given else Path(f"benchmarks/results/{stem}_{card_slug(card)}.json")


def write_result(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
