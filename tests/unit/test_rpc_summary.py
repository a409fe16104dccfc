"""The llama.cpp RPC baseline's summaries (bench/rpc_summary.py): timings, link counts, layers, slope."""

from __future__ import annotations

import pytest

from bench.rpc_summary import Replies, decode_summary, layer_devices, link_counts, markdown, rtt_slope


def test_decode_rate_is_steps_over_their_time_and_the_median_run_wins() -> None:
    # three runs of four steps: 40 ms, 80 ms and 20 ms per step -> 25, 12.5 and 50 tok/s
    runs = [[0.040] * 4, [0.080] * 4, [0.020] * 4]
    out = decode_summary([0.3, 0.1, 0.2], runs)
    assert out["decode_tok_s"] == 25.0
    assert out["tpot_ms_p50"] == 40.0
    assert out["tpot_ms_p95"] == 80.0  # nearest rank over all twelve steps
    assert out["ttft_ms_p50"] == 200.0
    assert out["ttft_ms_p95"] == 300.0


def test_decode_summary_refuses_a_run_without_steps() -> None:
    with pytest.raises(ValueError, match="decode step"):
        decode_summary([0.1, 0.2], [[0.01], []])


def snap(fwd_chunks: int, fwd_bytes: int, back_chunks: int, back_bytes: int, replies: int = 0) -> dict[str, int]:
    return {"fwd_chunks": fwd_chunks, "fwd_bytes": fwd_bytes, "back_chunks": back_chunks,
            "back_bytes": back_bytes, "connections": 1, "replies": replies}  # fmt: skip


def test_link_counts_are_differences_within_the_windows_per_token() -> None:
    # two links; what crossed between runs (the prefill) is outside the windows and not counted
    run1 = ([snap(10, 1000, 5, 500, 5), snap(0, 0, 0, 0)], [snap(16, 1600, 8, 800, 8), snap(4, 40, 2, 20)])
    run2 = (
        [snap(100, 9000, 50, 5000, 40), snap(9, 90, 9, 90)],
        [snap(106, 9600, 53, 5300, 43), snap(13, 130, 11, 110)],
    )
    per_link = link_counts([run1, run2], tokens=6)
    assert per_link[0] == {"back_bytes_per_token": 100.0, "back_chunks_per_token": 1.0,
                           "fwd_bytes_per_token": 200.0, "fwd_chunks_per_token": 2.0,
                           "replies_per_token": 1.0}  # fmt: skip
    assert per_link[1]["fwd_chunks_per_token"] == round(8 / 6, 2)
    assert per_link[1]["back_bytes_per_token"] == 6.67  # (20 + 20) / 6


def test_replies_are_server_runs_after_client_chunks_per_link() -> None:
    replies = Replies()
    # link 0: command, reply in three chunks, two async commands, reply -> 2 replies
    for back in (False, True, True, True, False, False, True):
        replies.saw(0, back)
    # link 1 interleaved: a reply seen before any command (cannot be one) is not counted
    for back in (True, False, True):
        replies.saw(1, back)
    assert replies.replies == {0: 2, 1: 1}


def test_layer_devices_reads_the_loaders_assignments() -> None:
    log = "\n".join(
        [f"load_tensors: layer {i:3d} assigned to device RPC0, is_swa = 0" for i in range(16)]
        + [f"load_tensors: layer {i:3d} assigned to device RPC1, is_swa = 0" for i in range(16, 31)]
        + ["load_tensors: offloaded 31/31 layers to GPU"]
    )
    assert layer_devices(log) == {"RPC0": 16, "RPC1": 15}
    assert layer_devices("load_tensors: layer   0 assigned to device CPU, is_swa = 0") == {"CPU": 1}


def test_rtt_slope_counts_the_round_trips_a_token_waits_for() -> None:
    # 3 nodes: 12 ms of compute plus 3 round trips; 1 node: 5 ms plus 1.5; a lone point has no slope
    rows = [{"nodes": 3, "rtt_ms": r, "tpot_ms_p50": 12 + 3 * r} for r in (0, 5, 10, 40)]
    rows += [{"nodes": 1, "rtt_ms": r, "tpot_ms_p50": 5 + 1.5 * r} for r in (0, 20)]
    rows += [{"nodes": 2, "rtt_ms": 10, "tpot_ms_p50": 30}]
    assert rtt_slope(rows) == {1: 1.5, 3: 3.0}


def test_the_markdown_table_sums_replies_over_links_and_flags_a_greedy_mismatch() -> None:
    link = {"replies_per_token": 1.0}
    rows = [
        {"nodes": 2, "rtt_ms": 0.0, "decode_tok_s": 80.04, "tpot_ms_p50": 12.5, "tpot_ms_p95": 14.0,
         "ttft_ms_p50": 300.4, "links": [link, link], "matches_local_greedy": True},
        {"nodes": 2, "rtt_ms": 10.0, "decode_tok_s": 30.0, "tpot_ms_p50": 32.5, "tpot_ms_p95": 35.0,
         "ttft_ms_p50": 410.0, "links": [link, link], "matches_local_greedy": False},
    ]  # fmt: skip
    lines = markdown(rows).splitlines()
    assert lines[2] == "| 2 | 0 | 80.0 | 12.5 / 14.0 | 300 | 2 | yes |"
    assert lines[3] == "| 2 | 10 | 30.0 | 32.5 / 35.0 | 410 | 2 | **no** |"
    assert lines[-1] == "TPOT p50 slope (ms per ms of RTT): 2 nodes 2.00"
