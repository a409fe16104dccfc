"""Mixture-of-experts blocks: onnxruntime's MoE op against plain ONNX top-k, on one random model.

    python bench/bench_moe.py [--rounds 8] [--experts 64] [--top-k 8] [--hidden 1024] [--expert-size 512]

A Qwen3-MoE-shaped checkpoint with random weights (4 layers, float32; the golden tokenizer of
tests/golden/qwen3_moe) is exported twice, `ExportOptions(moe="ort")` (the default: onnxruntime's
MoE contrib op, which routes inside its CPU kernel) and `moe="topk"` (softmax, TopK, each token
gathering its k experts' weights), and both packages take turns in one process (bench/turns.py):
greedy decode tok/s after a short prompt and prefill tok/s of a 128-token prompt. The two also give
the same logits (checked here within 1e-4, as the goldens check both against transformers).
Writes bench/out/moe.json and the "moe" section of docs/BENCHMARKS.md. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import replace_section  # noqa: E402
from bench.turns import local_decode, round_ratios, take_turns  # noqa: E402
from export.exporter import ExportOptions, export_checkpoint  # noqa: E402
from swarm.local import LocalModel  # noqa: E402
from swarm.runtime import RuntimeOptions  # noqa: E402

GOLDEN = REPO / "tests" / "golden" / "qwen3_moe"
LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4, 8, 2, 128, 320
PREFILL_LEN = 128


def random_checkpoint(folder: Path, hidden: int, experts: int, top_k: int, expert_size: int) -> Path:
    from safetensors.numpy import save_file

    config = json.loads((GOLDEN / "config.json").read_text())
    config.update(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=HEADS, head_dim=HEAD_DIM,
                  num_key_value_heads=KV_HEADS, num_experts=experts, num_local_experts=experts,
                  num_experts_per_tok=top_k, moe_intermediate_size=expert_size, intermediate_size=4 * expert_size,
                  max_position_embeddings=1024)  # fmt: skip
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, np.float32) * shape[-1] ** -0.5).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(VOCAB, hidden), "model.norm.weight": np.ones(hidden, np.float32),
               "lm_head.weight": w(VOCAB, hidden)}  # fmt: skip
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        tensors |= {f"{p}.input_layernorm.weight": np.ones(hidden, np.float32),
                    f"{p}.post_attention_layernorm.weight": np.ones(hidden, np.float32),
                    f"{p}.self_attn.q_proj.weight": w(q, hidden), f"{p}.self_attn.k_proj.weight": w(kv, hidden),
                    f"{p}.self_attn.v_proj.weight": w(kv, hidden), f"{p}.self_attn.o_proj.weight": w(hidden, q),
                    f"{p}.self_attn.q_norm.weight": np.ones(HEAD_DIM, np.float32),
                    f"{p}.self_attn.k_norm.weight": np.ones(HEAD_DIM, np.float32),
                    f"{p}.mlp.gate.weight": w(experts, hidden)}  # fmt: skip
        for e in range(experts):
            tensors |= {f"{p}.mlp.experts.{e}.gate_proj.weight": w(expert_size, hidden),
                        f"{p}.mlp.experts.{e}.up_proj.weight": w(expert_size, hidden),
                        f"{p}.mlp.experts.{e}.down_proj.weight": w(hidden, expert_size)}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(GOLDEN / name, folder / name)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def measure(packages: dict[str, Path], rounds: int) -> dict[str, Any]:
    models = {name: LocalModel(path, RuntimeOptions(threads=2, spin=True)) for name, path in packages.items()}
    prompt = [3 + (i * 7919) % (VOCAB - 3) for i in range(PREFILL_LEN)]
    logits = {name: m.session(PREFILL_LEN).logits(prompt) for name, m in models.items()}
    difference = float(np.abs(logits["ort"] - logits["topk"]).max())
    if difference > 1e-4:
        raise RuntimeError(f"the two formulations differ by {difference}")

    def prefill(model: LocalModel) -> float:
        session = model.session(PREFILL_LEN)
        start = time.perf_counter()
        session.logits(prompt)
        return PREFILL_LEN / (time.perf_counter() - start)

    decode = take_turns({n: (lambda m=m: local_decode(m)) for n, m in models.items()}, rounds, 0.1)
    fill = take_turns({n: (lambda m=m: prefill(m)) for n, m in models.items()}, max(2, rounds // 2), 0.1)
    return {
        "max_logit_difference": difference,
        "block_bytes": {n: sum(b.bytes for b in m.manifest.blocks) for n, m in models.items()},
        "decode_tok_s": {n: round(statistics.median(v), 1) for n, v in decode.items()},
        "decode_ratio_ort_over_topk": round(statistics.median(round_ratios(decode["ort"], decode["topk"])), 3),
        "prefill_tok_s": {n: round(statistics.median(v), 1) for n, v in fill.items()},
        "prefill_ratio_ort_over_topk": round(statistics.median(round_ratios(fill["ort"], fill["topk"])), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--expert-size", type=int, default=512)
    p.add_argument("--no-report", action="store_true", help="print the result only")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint(Path(tmp) / "moe", args.hidden, args.experts, args.top_k, args.expert_size)
        packages = {f: export_checkpoint(ckpt, Path(tmp) / f, ExportOptions(moe=f)).root for f in ("ort", "topk")}
        result = {"shape": vars(args) | {"layers": LAYERS}, **measure(packages, args.rounds)}
    print(json.dumps(result, indent=2))
    if args.no_report:
        return
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe.json").write_text(json.dumps(result, indent=2))
    s = result["shape"]
    body = (f"Command: `python bench/bench_moe.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}; random "
            f"Qwen3-MoE shape: {LAYERS} layers, hidden {s['hidden']}, {s['experts']} experts of {s['expert_size']}, "
            f"top {s['top_k']}; float32; 2 threads, spinning pool; the two packages take turns in one process).\n\n"
            "| formulation | decode tok/s | prefill tok/s (128 tokens) | block bytes |\n| --- | ---: | ---: | ---: |\n"
            + "".join(f"| {f} | {result['decode_tok_s'][f]} | {result['prefill_tok_s'][f]} | "
                      f"{result['block_bytes'][f]} |\n" for f in ("ort", "topk"))
            + f"\nonnxruntime's MoE op / plain top-k: decode {result['decode_ratio_ort_over_topk']:.2f}x, prefill "
              f"{result['prefill_ratio_ort_over_topk']:.2f}x; logits agree within "
              f"{result['max_logit_difference']:.1e}.")  # fmt: skip
    replace_section(REPO / "docs" / "BENCHMARKS.md", "moe", body)


if __name__ == "__main__":
    main()
