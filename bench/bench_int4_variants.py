"""Ways to map SmolLM2's Q4_1 blocks onto MatMulNBits: perplexity, the France answer, decode speed.

    python bench/bench_int4_variants.py [--rounds 24] [--cache DIR] [--variants default zp8 ...]

Our default export maps a Q4_1 block (w = d * q + m, q in 0..15) onto MatMulNBits as levels q with
zero point 0 and scale d, the mins m added beside it as (block sums of x) @ mins.T in float32
(export/gguf_blocks.py, export/linear.py). MatMulNBits runs at accuracy level 4: int8 activations,
quantized per weight block. Every variant holds the file's weights exactly (up to float32
rounding of m + 8 * d); they differ in what the int8 rounding of the activations costs:
  default            zero point 0, blocks of 32 (what swarm-export does)
  zp8                levels against zero point 8, mins + 8 * d: centred levels
  zp8-nozp           zp8 without MatMulNBits' zero-point input (its default, 8: the symmetric kernels)
  zp8-blocks16       zp8, every 4-bit block split into two blocks of 16 with the same scale and min
  zp8-nozp-blocks16  both of the above
  zp8-blocks16-down  zp8, only down_proj's blocks split
  float32            `--dtype float32`: the reference
The variants other than default and float32 exist only in this bench: each export runs in a
subprocess (`--export VARIANT OUT`) that patches the exporter first (`patch_exporter`).
Measured on each: perplexity of five fixed English texts (TEXTS), and llama.cpp's (the Q4_1 file)
on the same token ids; the greedy answer to the chat-templated France question (24 tokens), the
first token's logit margin over the runner-up, greedy agreement with float32 over 64 tokens, and
the same for llama.cpp; decode against llama.cpp Q4_1, both spinning, taking turns in one process
per variant (bench/turns.py, as bench/bench_gguf.py). Writes DIR/result.json and the
"int4-variants" section of docs/BENCHMARKS.md. Packages are cached in DIR by variant name:
remove DIR after changing the exporter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import bench_gguf  # noqa: E402
from bench.baselines import DEFAULT_CACHE, llama_next_token, load_llama  # noqa: E402
from bench.quality import agreement  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.turns import round_ratios, take_turns  # noqa: E402
from swarm.known_models import locate  # noqa: E402

ANSWER_TOKENS = 24
AGREEMENT_TOKENS = 64
# fixed English texts written for this measurement (varied topics and registers)
TEXTS = [
    bench_gguf.TEXT,
    "To make a simple loaf of bread, mix five hundred grams of flour with ten grams of salt and seven grams of "
    "dried yeast. Add about three hundred and fifty millilitres of warm water and stir until the dough comes "
    "together. Knead it on a floured table for ten minutes, until it feels smooth and springs back when you "
    "press it. Leave it in a covered bowl in a warm place for an hour, or until it has doubled in size. Shape "
    "it into a loaf, let it rise for another thirty minutes, and bake it at two hundred and twenty degrees for "
    "about half an hour. The loaf is done when it sounds hollow as you tap the bottom.",
    "Photosynthesis is the process by which green plants turn light into chemical energy. Inside the leaves, "
    "small structures called chloroplasts capture sunlight with a pigment named chlorophyll. The plant takes in "
    "carbon dioxide from the air through tiny pores and draws water up from its roots. Using the energy of the "
    "light, it combines them into sugar, which feeds the plant, and releases oxygen as a by-product. Almost all "
    "life on Earth depends on this process, either directly, as plants do, or indirectly, by eating plants or "
    "the animals that eat them.",
    "Dear Maria, thank you for your letter and for the photographs of the new house. The garden looks "
    "wonderful, and I can see why the children love it. We are all well here. Peter started his new job at the "
    "hospital last month and comes home tired but happy. The weather has been cold and wet, so we have spent "
    "most weekends indoors, reading and playing cards. We hope to visit you in the summer, if the trains are "
    "running again by then. Please give our love to everyone, and write soon. With warm wishes, Anna.",
    "When the committee met on Tuesday, the first question was the budget for the coming year. The treasurer "
    "explained that costs had risen by almost twelve percent, mostly because of energy prices, while income "
    "from membership had stayed the same. Several members suggested raising the annual fee; others argued that "
    "a higher fee would drive away the students and pensioners who make up a third of the club. In the end the "
    "committee agreed to keep the fee as it is for one more year and to look for a sponsor instead.",
]


@dataclass(frozen=True)
class Variant:
    zero_point: int = 0  # Q4_1 levels are stored against this zero point, the mins shifted by zero_point * d
    split: tuple[str, ...] = ()  # linear layers (name substrings) whose 4-bit blocks are halved to 16 values
    symmetric: bool = False  # leave out MatMulNBits' zero-point input where it equals the default (8)
    args: tuple[str, ...] = ()  # further swarm-export arguments


VARIANTS = {
    "default": Variant(),
    "zp8": Variant(zero_point=8),
    "zp8-nozp": Variant(zero_point=8, symmetric=True),
    "zp8-blocks16": Variant(zero_point=8, split=("proj",)),
    "zp8-nozp-blocks16": Variant(zero_point=8, split=("proj",), symmetric=True),
    "zp8-blocks16-down": Variant(zero_point=8, split=("down_proj",)),
    "float32": Variant(args=("--dtype", "float32")),
}
REFERENCE = "float32"
LLAMA = "llama.cpp Q4_1"


def patch_exporter(variant: Variant) -> None:
    """Make this process's exporter write `variant` (the weights stay exact in every one)."""
    import export.gguf_blocks as blocks
    import export.linear as linear
    from export.gguf_file import GgufCheckpoint
    from export.quantize import BlockWeight

    if variant.zero_point:  # w = d * q + m = d * (q - z) + (m + z * d)
        q4_1 = blocks._FORMATS[blocks.Q.Q4_1]

        def centred(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
            levels, d, m, bits, _ = q4_1(raw)
            assert m is not None
            return levels, d, m + np.float32(variant.zero_point) * d, bits, variant.zero_point

        blocks._FORMATS[blocks.Q.Q4_1] = centred
    if variant.split:
        take_linear = GgufCheckpoint.take_linear

        def halved(self: GgufCheckpoint, name: str, shape: tuple[int, ...]) -> np.ndarray | BlockWeight:
            w = take_linear(self, name, shape)
            if not (isinstance(w, BlockWeight) and w.bits == 4 and any(s in name for s in variant.split)):
                return w
            n, count, size = w.levels.shape
            mins = None if w.mins is None else np.repeat(w.mins, 2, axis=1)
            return BlockWeight(w.levels.reshape(n, 2 * count, size // 2), np.repeat(w.scales, 2, axis=1),
                               np.repeat(w.zero_points, 2, axis=1), mins, w.bits, w.k, w.exact)  # fmt: skip

        GgufCheckpoint.take_linear = halved  # type: ignore[method-assign]
    if variant.symmetric:
        matmul_nbits = linear._matmul_nbits

        def without_default_zeros(g: Any, x: str, w: BlockWeight, path: str, fmt: Any) -> list[str]:
            terms = matmul_nbits(g, x, w, path, fmt)
            if (w.zero_points == 1 << (w.bits - 1)).all():
                node = next(n for n in reversed(g.nodes) if n.name == f"{path}/MatMulNBits")
                zeros = node.input.pop()
                g.initializers = [t for t in g.initializers if t.name != zeros]
            return terms

        linear._matmul_nbits = without_default_zeros


def build(name: str, cache: Path) -> Path:
    """The package of variant `name`, exported in a subprocess (its patches die with it), cached."""
    out = cache / name
    if not (out / "manifest.json").is_file():
        print(f"  exporting {name}", file=sys.stderr)
        cmd = [sys.executable, __file__, "--export", name, str(out)]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def export_variant(name: str, out: str) -> int:
    from export.cli import main as export_main

    variant = VARIANTS[name]
    patch_exporter(variant)
    return export_main([str(locate("smollm2")), out, "--force", "-q", *variant.args])


def margin(logits: np.ndarray, token: int) -> tuple[float, int]:
    """How far `token`'s logit is above the best other token's (negative: below), and that token."""
    others = logits.copy()
    others[token] = -np.inf
    rival = int(others.argmax())
    return float(logits[token] - logits[rival]), rival


def nll(logits: np.ndarray, ids: list[int]) -> float:
    """The summed negative log-likelihood of ids[1:]."""
    return float(np.log(bench_gguf._perplexity(logits.astype(np.float64), ids)) * (len(ids) - 1))


def perplexities(nlls: list[float], texts: list[list[int]]) -> dict[str, Any]:
    counts = [len(ids) - 1 for ids in texts]
    return {"per_text": [round(float(np.exp(v / c)), 4) for v, c in zip(nlls, counts, strict=True)],
            "all": round(float(np.exp(sum(nlls) / sum(counts))), 4)}  # fmt: skip


def ours_quality(package: Path, texts: list[list[int]], prompt: list[int]) -> dict[str, Any]:
    from swarm.generation import GenerationRequest
    from swarm.local import LocalModel

    with LocalModel(package) as model:
        nlls = [nll(model.session(len(ids)).logits(ids), ids) for ids in texts]
        first = model.session(len(prompt) + 1).logits(prompt)[-1].astype(np.float64)
        ids = list(model.generate_ids(GenerationRequest(tuple(prompt), AGREEMENT_TOKENS, stop_on_eos=False)))
    return {"perplexity": perplexities(nlls, texts), "ids": ids, "first_logits": first}


def llama_quality(gguf: Path, texts: list[list[int]], prompt: list[int]) -> dict[str, Any]:
    import llama_cpp

    nlls = [np.log(bench_gguf.llama_perplexity(gguf, ids)) * (len(ids) - 1) for ids in texts]
    llm = load_llama(gguf, threads=2, n_ctx=512)
    llm.reset()
    llm.eval(prompt)
    first = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    first = first.astype(np.float64)  # a copy: the next eval overwrites llama.cpp's buffer
    ids: list[int] = []
    for _ in range(AGREEMENT_TOKENS):
        ids.append(llama_next_token(llm))
        llm.eval([ids[-1]])
    return {"perplexity": perplexities(nlls, texts), "ids": ids, "first_logits": first}


def quality(packages: dict[str, Path], gguf: Path) -> dict[str, Any]:
    """Perplexity, the France answer, its first-token margin and agreement with float32, per engine."""
    from swarm.local import LocalModel

    with LocalModel(packages[REFERENCE]) as model:
        codec, eos = model.codec, set(model.manifest.tokenizer.eos_token_ids)
        texts = [list(codec.encode(t)) for t in TEXTS]
        prompt = list(codec.encode_chat(bench_gguf.QUESTION))
    raw = {name: ours_quality(package, texts, prompt) for name, package in packages.items()}
    raw[LLAMA] = llama_quality(gguf, texts, prompt)
    reference = raw[REFERENCE]["ids"]
    expected = reference[0]  # the reference's first answer token ("The")
    rows = {}
    for name, r in raw.items():
        answer = r["ids"][:ANSWER_TOKENS]
        answer = answer[: next((i for i, t in enumerate(answer) if t in eos), len(answer))]
        gap, rival = margin(r["first_logits"], expected)
        rows[name] = {**r["perplexity"], "answer": codec.decode(answer), "margin": round(gap, 3),
                      "margin_token": codec.decode([expected]), "runner_up": codec.decode([rival]),
                      "agree_with_float32": agreement(r["ids"], reference), "of": AGREEMENT_TOKENS}  # fmt: skip
        print(name, rows[name], file=sys.stderr)
    return {"text_tokens": [len(ids) for ids in texts], "engines": rows}


def decode_race(package: Path, gguf: Path, rounds: int) -> dict[str, Any]:
    """Our spinning decode against llama.cpp's, taking turns in this process."""
    ours, _, model = bench_gguf.ours_engine(package, True)
    llama, _, llm = bench_gguf.llama_engine(gguf)
    speeds = take_turns({"ours": ours, "llama": llama}, rounds, bench_gguf.PAUSE_S)
    ratios = round_ratios(speeds["ours"], speeds["llama"])
    del llm
    model.close()
    return {"ours_tok_s": round(statistics.median(speeds["ours"]), 1),
            "llama_tok_s": round(statistics.median(speeds["llama"]), 1),
            "ratio": round(statistics.median(ratios), 3),
            "quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)]}  # fmt: skip


def _cell(text: str, width: int = 40) -> str:
    text = text.replace("\n", " ").replace("|", "\\|")
    return f"“{text[:width]}…”" if len(text) > width else f"“{text}”"


def _names(rows: list[str]) -> str:
    return ", ".join(rows) if rows else "none"


def summary(result: dict[str, Any]) -> str:
    """What the table shows, computed from it."""
    engines, speed = result["quality"]["engines"], result["decode"]
    llama_ppl, llama_answer = engines[LLAMA]["all"], engines[LLAMA]["answer"]
    reference = engines[REFERENCE]
    reference_answer = reference["answer"]
    int4 = [n for n in engines if n not in (REFERENCE, LLAMA)]
    at_most = [n for n in int4 if engines[n]["all"] <= llama_ppl]
    keeps = [n for n in int4 if engines[n]["answer"] == reference_answer]
    both = [n for n in at_most if n in keeps]
    fast = [n for n in int4 if n in speed and speed[n]["ratio"] >= 1.0]
    margins = [r["margin"] for r in engines.values()]
    lines = [
        f"Perplexity at or below llama.cpp's ({llama_ppl:.3f}): {_names(at_most)}; "
        f"above it: {_names([n for n in int4 if n not in at_most])}. "
        f"The float32 answer ({_cell(reference_answer)}) is kept by {_names(keeps)}; "
        f"llama.cpp answers {_cell(llama_answer)}. Decode at least as fast as llama.cpp: {_names(fast)}.",
        "Both below llama.cpp's perplexity and keeping the answer: "
        + (", ".join(f"{n} at {speed[n]['ratio']:.2f}x llama.cpp's decode" if n in speed else n for n in both)
           if both else "none") + ".",
        f"The answer turns on its first token: in float32 itself “{reference['margin_token']}” leads "
        f"“{reference['runner_up']}” by {reference['margin']:+.2f} logits (margins here span "
        f"{min(margins):+.2f} to {max(margins):+.2f}), while perplexity averages over "
        f"{sum(result['quality']['text_tokens'])} token ids.",
    ]  # fmt: skip
    return " ".join(lines)


def markdown(result: dict[str, Any], command: str) -> str:
    q, speed = result["quality"], result["decode"]
    engines, llama_ppl = q["engines"], q["engines"][LLAMA]["all"]
    lines = [f"Command: `{command}` ({result['date']}; {result['machine']}; shared with other jobs). "
             "SmolLM2-135M-Instruct from `SmolLM2-135M-Instruct.Q4_1.gguf`, exported several ways, every one "
             "holding the file's weights exactly (variants other than default and float32 exist only in this "
             f"bench); 2 threads. Perplexity over {sum(q['text_tokens'])} token ids of {len(TEXTS)} fixed English "
             f"texts, the same ids for llama.cpp. France: greedy answer to the chat-templated “What is the capital "
             f"of France?” ({ANSWER_TOKENS} tokens), the logit margin of “{engines[REFERENCE]['margin_token']}” "
             f"(float32's first token) over the best other first token, greedy tokens equal to float32's of "
             f"{AGREEMENT_TOKENS}. Decode: ours spinning against llama.cpp Q4_1 in one process per variant, "
             f"{result['rounds']} rounds taking turns (24 greedy tokens each); ratio = median of per-round "
             "ratios (quartiles).", "",
             "| variant | perplexity (all) | vs llama.cpp | France answer | margin | equal to float32 | "
             "decode vs llama.cpp |", "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in engines.items():
        if name in speed:
            s = speed[name]
            decode = f"**{s['ratio']:.2f}x** ({s['quartiles'][0]:.2f} – {s['quartiles'][2]:.2f})"
        else:
            decode = "1.00x" if name == LLAMA else "—"
        versus = "—" if name == LLAMA else f"{100 * (r['all'] / llama_ppl - 1):+.2f}%"
        lines.append(f"| {name} | {r['all']:.3f} | {versus} | {_cell(r['answer'])} | "
                     f"{r['margin']:+.2f} (vs “{r['runner_up'].strip()}”) | {r['agree_with_float32']} of "
                     f"{r['of']} | {decode} |")  # fmt: skip
    lines += ["", summary(result), "", "Perplexity per text (token ids per text in the header):", "",
              "| variant | " + " | ".join(f"text {i + 1} ({n})" for i, n in enumerate(q["text_tokens"])) + " | all |",
              "| --- |" + " ---: |" * (len(TEXTS) + 1)]  # fmt: skip
    for name, r in engines.items():
        lines.append(f"| {name} | " + " | ".join(f"{p:.3f}" for p in r["per_text"]) + f" | {r['all']:.3f} |")
    if speed:
        lines += [
            "",
            "Decode tok/s, medians (ours / llama.cpp, in the same rounds): "
            + "; ".join(f"{n} {s['ours_tok_s']} / {s['llama_tok_s']}" for n, s in speed.items())
            + ".",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=24, help="decode rounds per variant")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE / "int4-variants", help="package folder")
    int4 = [v for v in VARIANTS if v != REFERENCE]
    p.add_argument("--variants", nargs="+", choices=int4, default=int4, help="which int4 variants (default all)")
    p.add_argument("--export", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--decode", type=Path, metavar="PKG", help=argparse.SUPPRESS)
    args = p.parse_args()
    gguf = locate("smollm2")
    if args.export:
        sys.exit(export_variant(*args.export))
    if args.decode:
        print(json.dumps(decode_race(args.decode, gguf, args.rounds)))
        return
    started = time.perf_counter()
    packages = {name: build(name, args.cache) for name in [*args.variants, REFERENCE]}
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": bench_gguf.machine(),
                              "rounds": args.rounds, "quality": quality(packages, gguf), "decode": {}}  # fmt: skip
    for name in args.variants:  # one process each: a spinning pool is process-wide
        cmd = [sys.executable, __file__, "--decode", str(packages[name]), "--rounds", str(args.rounds)]
        done = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
        result["decode"][name] = json.loads(done.stdout)
        print(name, result["decode"][name], file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - started)
    (args.cache / "result.json").write_text(json.dumps(result, indent=2))
    command = ("python bench/bench_int4_variants.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "int4-variants", markdown(result, command))


if __name__ == "__main__":
    main()
