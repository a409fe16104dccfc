"""Pure summaries for bench/llamacpp_rpc.py: timings, per-token link counts, layer placement, RTT slope.

No llama.cpp here, so the unit tests run anywhere.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

LAYER_LINE = re.compile(r"layer\s+\d+ assigned to device (\S+?),")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as bench/bench_swarm.py takes it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def decode_summary(ttft_s: Sequence[float], steps_s: Sequence[Sequence[float]]) -> dict[str, float]:
    """The swarm's figures from runs: decode tok/s = steps / (first -> last token), median over runs."""
    if not ttft_s or len(ttft_s) != len(steps_s) or any(not s for s in steps_s):
        raise ValueError("need one TTFT and at least one decode step per run")
    steps = [s for run in steps_s for s in run]
    return {
        "decode_tok_s": round(statistics.median(len(run) / sum(run) for run in steps_s), 2),
        "tpot_ms_p50": round(percentile(steps, 0.5) * 1e3, 3),
        "tpot_ms_p95": round(percentile(steps, 0.95) * 1e3, 3),
        "ttft_ms_p50": round(percentile(ttft_s, 0.5) * 1e3, 2),
        "ttft_ms_p95": round(percentile(ttft_s, 0.95) * 1e3, 2),
    }


def link_counts(windows: Sequence[tuple[Sequence[dict[str, int]], Sequence[dict[str, int]]]],
                tokens: int) -> list[dict[str, float]]:  # fmt: skip
    """Per link: what crossed it per decode token, summed over (before, after) snapshot windows."""
    if tokens <= 0:
        raise ValueError("no decode tokens to divide by")
    links = len(windows[0][0]) if windows else 0
    out = []
    for i in range(links):
        total = Counter[str]()
        for before, after in windows:
            for key in ("fwd_chunks", "fwd_bytes", "back_chunks", "back_bytes", "replies"):
                total[key] += after[i].get(key, 0) - before[i].get(key, 0)
        out.append({f"{k}_per_token": round(v / tokens, 2) for k, v in sorted(total.items())})
    return out


class Replies:
    """Per link, the runs of server -> client chunks that follow client -> server ones: the replies."""

    def __init__(self) -> None:
        self.replies: Counter[int] = Counter()
        self.last_back: dict[int, bool] = {}

    def saw(self, link: int, back: bool) -> None:
        if back and self.last_back.get(link) is False:
            self.replies[link] += 1
        self.last_back[link] = back


def layer_devices(log: str) -> dict[str, int]:
    """How many layers llama.cpp's loader assigned to each device, from its verbose log."""
    return dict(Counter(LAYER_LINE.findall(log)))


def rtt_slope(rows: Sequence[dict[str, Any]], key: str = "tpot_ms_p50") -> dict[int, float]:
    """Per node count: least-squares ms of `key` per ms of RTT = round trips a token waits for."""
    slopes = {}
    for n in sorted({r["nodes"] for r in rows}):
        pts = [(float(r["rtt_ms"]), float(r[key])) for r in rows if r["nodes"] == n]
        if len({x for x, _ in pts}) < 2:
            continue
        mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slopes[n] = round(sum((x - mx) * (y - my) for x, y in pts) / sxx, 3)
    return slopes


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (nodes, RTT): the table's llama.cpp RPC columns, then the RTT slope per node count."""
    lines = ["| nodes | RTT ms | decode tok/s | TPOT p50 / p95 ms | TTFT p50 ms | replies per token | greedy = local |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]  # fmt: skip
    for r in rows:
        replies = sum(link.get("replies_per_token", 0.0) for link in r.get("links", []))
        matches = r.get("matches_local_greedy")
        same = "-" if matches is None else "yes" if matches else "**no**"
        lines.append(f"| {r['nodes']} | {r['rtt_ms']:g} | {r['decode_tok_s']:.1f} | {r['tpot_ms_p50']:.1f} / "
                     f"{r['tpot_ms_p95']:.1f} | {r['ttft_ms_p50']:.0f} | {replies:g} | {same} |")  # fmt: skip
    slopes = rtt_slope(rows)
    if slopes:
        lines += [
            "",
            "TPOT p50 slope (ms per ms of RTT): " + ", ".join(f"{n} nodes {s:.2f}" for n, s in slopes.items()),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text())["rows"]))
