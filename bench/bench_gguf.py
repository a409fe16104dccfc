"""A real GGUF model, ours against llama.cpp on the same file: SmolLM2-135M-Instruct (Q4_1).

    python bench/bench_gguf.py [--rounds 8] [--cache DIR] [--skip-swarm] [--pairs int4 ...]

Pairs, each engine starting from the same Q4_1 weights:
  int4     our default export of the Q4_1 file (its own blocks)    llama.cpp on the Q4_1 file itself
  int8     `swarm-export --quantize int8` of the Q4_1 file          llama.cpp Q8_0, re-quantized from it
  float32  `swarm-export --dtype float32` of the Q4_1 file          llama.cpp F32, dequantized from it
For each pair one process loads both engines and takes turns (bench/turns.py): greedy decode
tok/s over 24 tokens and prefill tok/s of a 128-token prompt, round after round, the ratio being
the median of the per-round ratios. Quality, on one fixed English text fed to both as the same
token ids: perplexity, and our greedy agreement with our float32 export on the chat question.
Then a 3-node loopback swarm of the int4 package against the local runner (bench/bench_swarm.py).
Needs llama-cpp-python (bench/LLAMA_CPP.md). Writes bench/out/gguf.json and the "gguf" section
of docs/BENCHMARKS.md, with the CPU and the instruction sets llama.cpp was built for. Packages are
cached by export arguments (bench/bench_local.py): remove DIR/packages after changing the export.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE, llama_next_token, load_llama  # noqa: E402
from bench.bench_local import export_with  # noqa: E402
from bench.quality import agreement  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.turns import NEW_TOKENS, PROMPT, local_decode, round_ratios, take_turns  # noqa: E402
from swarm.known_models import locate  # noqa: E402

PAIRS = {  # our variant: (export arguments, llama.cpp type, llama_ftype to make it from the Q4_1 file)
    "int4": ([], "Q4_1", None),
    "int8": (["--quantize", "int8"], "Q8_0", 7),
    "float32": (["--dtype", "float32"], "F32", 0),
}
PREFILL_LEN = 128
PAUSE_S = 0.1
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# a fixed English text for perplexity (written for this benchmark)
TEXT = (
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every night its keeper "
    "climbed the narrow stairs, cleaned the great lens and lit the lamp, so that the fishing boats could find "
    "their way home through the fog. In the spring of the year the town built a new harbour, the keeper wrote "
    "a letter to the council. He asked them to keep the light burning, because the sea does not care about new "
    "harbours, and the rocks below the cliff are as sharp as they ever were. The council agreed, and the light "
    "still turns tonight, long after the keeper himself has gone."
)


def gguf_file(variant: str, cache: Path) -> Path:
    """The Q4_1 file itself, or llama.cpp's re-quantization of it to another type (cached)."""
    _, gguf_type, ftype = PAIRS[variant]
    return requantized(locate("smollm2"), gguf_type, ftype, cache)


def requantized(source: Path, gguf_type: str, ftype: int | None, cache: Path) -> Path:
    """`source`, or llama.cpp's re-quantization of it to `gguf_type` (llama_ftype `ftype`), cached."""
    if ftype is None:
        return source
    import llama_cpp

    target = cache / "gguf" / f"{source.stem}-{gguf_type}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread, params.allow_requantize = ftype, 2, True
        partial = target.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize to {gguf_type} failed")
        partial.replace(target)
    return target


def llama_engine(gguf: Path) -> tuple[Callable[[], float], Callable[[], float], Any]:
    llm = load_llama(gguf, threads=2, n_ctx=512)
    prompt = [3 + (i * 7919) % (llm.n_vocab() - 3) for i in range(PREFILL_LEN)]

    def decode() -> float:
        llm.reset()
        llm.eval(PROMPT)
        start = time.perf_counter()
        for _ in range(NEW_TOKENS):
            llm.eval([llama_next_token(llm)])
        return NEW_TOKENS / (time.perf_counter() - start)

    def prefill() -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        return PREFILL_LEN / (time.perf_counter() - start)

    return decode, prefill, llm


def ours_engine(package: Path, spin: bool) -> tuple[Callable[[], float], Callable[[], float], Any]:
    from swarm.config import RuntimeOptions
    from swarm.local import LocalModel

    model = LocalModel(package, RuntimeOptions(threads=2, spin=spin))
    prompt = [3 + (i * 7919) % (model.manifest.architecture.vocab_size - 3) for i in range(PREFILL_LEN)]

    def prefill() -> float:
        session = model.session(PREFILL_LEN + 1)
        start = time.perf_counter()
        session.logits(prompt)
        return PREFILL_LEN / (time.perf_counter() - start)

    return (lambda: local_decode(model)), prefill, model


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logits = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def one_pair(package: Path, gguf: Path, spin: bool, rounds: int) -> dict[str, Any]:
    ours_decode, ours_prefill, model = ours_engine(package, spin)
    llama_decode, llama_prefill, llm = llama_engine(gguf)
    decode = take_turns({"ours": ours_decode, "llama": llama_decode}, rounds, PAUSE_S)
    prefill = take_turns({"ours": ours_prefill, "llama": llama_prefill}, max(2, rounds // 2), PAUSE_S)
    ids = model.codec.encode(TEXT)
    ours_ppl = _perplexity(model.session(len(ids)).logits(ids).astype(np.float64), ids)
    ratios = round_ratios(decode["ours"], decode["llama"])
    result = {
        "ours_decode_tok_s": round(statistics.median(decode["ours"]), 1),
        "llama_decode_tok_s": round(statistics.median(decode["llama"]), 1),
        "decode_ratio": round(statistics.median(ratios), 3),
        "decode_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)],
        "ours_prefill_tok_s": round(statistics.median(prefill["ours"]), 1),
        "llama_prefill_tok_s": round(statistics.median(prefill["llama"]), 1),
        "prefill_ratio": round(statistics.median(round_ratios(prefill["ours"], prefill["llama"])), 3),
        "ours_perplexity": round(ours_ppl, 4),
        "llama_perplexity": round(llama_perplexity(gguf, ids), 4),
        "text_tokens": len(ids),
    }
    del llm
    model.close()
    return result


def llama_perplexity(gguf: Path, ids: list[int]) -> float:
    """llama.cpp's perplexity of `ids` (the ids our tokenizer gives), from all its logits."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=1024, n_threads=2, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    return _perplexity(logits, ids)


def greedy_agreement(packages: dict[str, Path], tokens: int = 64) -> dict[str, Any]:
    from swarm.generation import GenerationRequest
    from swarm.local import LocalModel

    out: dict[str, Any] = {}
    reference: list[int] | None = None
    for variant in ("float32", "int8", "int4"):
        with LocalModel(packages[variant]) as model:
            prompt = tuple(model.codec.encode_chat(QUESTION))
            ids = list(model.generate_ids(GenerationRequest(prompt, tokens, stop_on_eos=False)))
            answer = model.chat(QUESTION, max_tokens=32)
        reference = reference or ids
        out[variant] = {"agree_with_float32": agreement(ids, reference), "of": tokens, "answer": answer}
    return out


def swarm_rows(package: Path, generations: int) -> list[dict[str, Any]]:
    rows = []
    for setup, nodes in (("local runner", 0), ("3-node swarm", 3)):
        cmd = [sys.executable, "bench/bench_swarm.py", "--one", str(package), str(nodes), "1", str(generations)]
        done = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
        rows.append({"setup": setup, **json.loads(done.stdout)})
    return rows


def machine() -> str:
    """The CPU and what llama.cpp was compiled to use on it: timings mean little without them."""
    import platform

    import llama_cpp

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:  # Linux only, as the bench is
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    system = llama_cpp.llama_print_system_info().decode()
    built = [f.split(" = ")[0].split(":")[-1].strip() for f in system.split("|") if f.strip().endswith("= 1")]
    return f"{cpu}, {os.cpu_count()} cores, {isa}; llama.cpp built with {' '.join(built)}"


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; {result.get('machine', '')}; "
             "a machine shared with other jobs; SmolLM2-135M-Instruct from "
             f"`SmolLM2-135M-Instruct.Q4_1.gguf`; 2 threads; both engines in one process per pair, "
             f"{result['rounds']} rounds taking turns: decode {NEW_TOKENS} greedy tokens after a "
             f"{len(PROMPT)}-token prompt, prefill {PREFILL_LEN} tokens; ratio = median of per-round ratios; "
             f"perplexity on the same {result['pairs'][0]['text_tokens']} token ids of a fixed English text).", "",
             "| ours | llama.cpp | our pool | decode tok/s ours / llama.cpp | decode ratio (quartiles) | "
             "prefill tok/s ours / llama.cpp | perplexity ours / llama.cpp |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in result["pairs"]:
        q1, _, q3 = r["decode_ratio_quartiles"]
        pool = "spinning (CLI default)" if r["spin"] else "`--no-spin`"
        lines.append(f"| {r['variant']} | {r['type']} | {pool} | {r['ours_decode_tok_s']} / "
                     f"{r['llama_decode_tok_s']} | **{r['decode_ratio']:.2f}x** ({q1:.2f} – {q3:.2f}) | "
                     f"{r['ours_prefill_tok_s']} / {r['llama_prefill_tok_s']} | "
                     f"{r['ours_perplexity']:.3f} / {r['llama_perplexity']:.3f} |")  # fmt: skip
    lines += ["", "Greedy agreement with our float32 export (64 tokens after the chat-templated question):", "",
              "| ours | tokens equal | answer |", "| --- | ---: | --- |"]  # fmt: skip
    for variant, row in result["agreement"].items():
        lines.append(f"| {variant} | {row['agree_with_float32']} of {row['of']} | {row['answer']!r} |")
    if result.get("swarm"):
        local = result["swarm"][0]["decode_tok_s"]
        lines += ["", "int4 package, nodes as separate processes on 127.0.0.1 (bench/bench_swarm.py's measure):", "",
                  "| setup | decode tok/s | vs local | TTFT p50 ms | TPOT p50 / p95 ms |",
                  "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for row in result["swarm"]:
            lines.append(f"| {row['setup']} | {row['decode_tok_s']:.1f} | {row['decode_tok_s'] / local:.2f}x | "
                         f"{row['ttft_ms_p50']:.1f} | {row['tpot_ms_p50']:.2f} / {row['tpot_ms_p95']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--generations", type=int, default=3, help="generations per swarm setup")
    p.add_argument("--skip-swarm", action="store_true")
    p.add_argument("--no-spin", action="store_true", help="also measure our --no-spin pool")
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS), help="which pairs (default all)")
    p.add_argument("--pair", nargs=4, metavar=("VARIANT", "PKG", "GGUF", "SPIN"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pair:
        variant, package, gguf, spin = args.pair
        print(json.dumps({"variant": variant, "spin": spin == "1", "type": PAIRS[variant][1],
                          **one_pair(Path(package), Path(gguf), spin == "1", args.rounds)}))  # fmt: skip
        return
    source = locate("smollm2")
    packages = {v: export_with(source, PAIRS[v][0], args.cache) for v in PAIRS}
    pairs = []
    for variant in args.pairs:
        for spin in (True, False) if args.no_spin else (True,):  # the spinning pool is process-wide
            cmd = [sys.executable, __file__, "--pair", variant, str(packages[variant]),
                   str(gguf_file(variant, args.cache)), "1" if spin else "0", "--rounds", str(args.rounds)]  # fmt: skip
            pairs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            print(pairs[-1], file=sys.stderr)
    result = {"rounds": args.rounds, "machine": machine(), "pairs": pairs, "agreement": greedy_agreement(packages)}
    if not args.skip_swarm:
        result["swarm"] = swarm_rows(packages["int4"], args.generations)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gguf.json").write_text(json.dumps(result, indent=2))
    command = ("python bench/bench_gguf.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "gguf", markdown(result, command))


if __name__ == "__main__":
    main()
