"""Issue 2 benchmark: the local runner against transformers and llama.cpp, in one run.

    python bench/bench_local.py [--models stories260K,tinyllama-1.1b] [--cache DIR] [--skip-llamacpp]

For each model: export float32 / int8 / int4 packages (cached), then measure each engine in a
fresh process (prefill tok/s over a 128-token prompt, greedy decode tok/s over 32 tokens,
2 threads), our float32 decode against the memory-bandwidth floor, and for the real model
the perplexity and greedy tokens of each quantization. Writes bench/out/local.json and the
"Local runner" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.make_checkpoint import make_checkpoint  # noqa: E402
from bench.report import replace_section  # noqa: E402

STORIES = REPO.parent / "shared" / "models" / "stories260K"
# Every quantized variant names its block size, so a package cached under these arguments is
# never one exported with an older default.
VARIANTS = {
    "float32": [],
    "int8": ["--quantize", "int8", "--block-size", "128"],
    "int8 block 32": ["--quantize", "int8", "--block-size", "32"],
    "int4": ["--quantize", "int4", "--block-size", "128"],
    "int4 block 256": ["--quantize", "int4", "--block-size", "256"],
}


def checkpoint(name: str, cache: Path) -> Path:
    if name == "stories260K":
        return STORIES
    return make_checkpoint(cache / name, name)


def export(ckpt: Path, variant: str, cache: Path) -> Path:
    return export_with(ckpt, VARIANTS[variant], cache)


def export_with(ckpt: Path, args: list[str], cache: Path) -> Path:
    """The package `swarm-export CKPT OUT *args` writes, cached under a name made of the args."""
    out = cache / "packages" / f"{ckpt.name}-{'-'.join(a.lstrip('-') for a in args) or 'float32'}"
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "export.cli", str(ckpt), str(out), "--force", "-q", *args]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def run_json(cmd: list[str]) -> Any:
    print("  $", " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(done.stdout)


def measure_model(name: str, cache: Path, skip_llamacpp: bool) -> dict[str, Any]:
    ckpt = checkpoint(name, cache)
    print(f"== {name}", file=sys.stderr)
    result: dict[str, Any] = {"model": name, "engines": []}
    for variant in VARIANTS:
        package = export(ckpt, variant, cache)
        for spin in (True, False):  # swarm-client's default, then --no-spin (the SDK's default)
            speed = run_json([sys.executable, "bench/engine_speed.py", str(package), *(["--spin"] if spin else [])])
            result["engines"].append({**speed, "engine": f"swarm {variant}" + ("" if spin else " --no-spin")})
    hf = run_json([sys.executable, "bench/baselines.py", "transformers", str(ckpt)])[0]
    result["engines"].append({**hf, "engine": "transformers eager float32"})
    if not skip_llamacpp:
        for row in run_json([sys.executable, "bench/baselines.py", "llamacpp", str(ckpt), "--cache", str(cache),
                             "--types", "F32,F16,Q8_0,Q4_K_M"]):  # fmt: skip
            result["engines"].append({**row, "engine": f"llama.cpp {row['type']}"})
    if name == "stories260K":
        result["quality"] = run_json([sys.executable, "bench/bench_local.py", "--quality", str(ckpt),
                                      "--cache", str(cache)])  # fmt: skip
    return result


def quality(ckpt: Path, cache: Path) -> list[dict[str, Any]]:
    from bench.quality import agreement, greedy_ids, perplexity
    from swarm.local import LocalModel

    rows, reference = [], None
    for variant in VARIANTS:
        model = LocalModel(export(ckpt, variant, cache))
        ids = greedy_ids(model)
        reference = reference or ids
        rows.append({"variant": variant, "perplexity": round(perplexity(model), 3),
                     "greedy_agreement_with_float32": agreement(ids, reference), "greedy_ids": ids,
                     "greedy_text": model.codec.decode(ids)})  # fmt: skip
    return rows


def floor_lines(f32: dict[str, Any]) -> list[str]:
    q1, q2, q3 = f32["ratio_to_floor_quartiles"]
    gb = f32["weight_bytes_per_token"] / 1e9
    label = "spinning pool, swarm-client's default" if f32.get("spin") else "`--no-spin`"
    return ["", f"Float32 decode ({label}) against the memory-bandwidth floor ({gb:.2f} GB read per token, "
            f"{f32['bandwidth_gb_s']} GB/s probed at the end): **{f32['ratio_to_floor']:.2f}x** (median of "
            f"per-step ratios, each step paired with a bandwidth probe just before it; quartiles "
            f"{q1:.2f} / {q2:.2f} / {q3:.2f}).", ""]  # fmt: skip


# Which llama.cpp type each of our formats is held against
COUNTERPARTS = {"float32": "F32", "int8": "Q8_0", "int8 block 32": "Q8_0", "int4": "Q4_K_M",
                "int4 block 256": "Q4_K_M"}  # fmt: skip


def normalized_lines(engines: list[dict[str, Any]]) -> list[str]:
    """Decode speed per GB/s of bandwidth probed before each step: engines run minutes apart on
    a machine whose bandwidth drifts compare on this, not on raw tokens/s."""
    llama = {e["type"]: e for e in engines if e["engine"].startswith("llama.cpp") and "decode_tok_s_per_gb_s" in e}
    ours = [e for e in engines if e["engine"].startswith("swarm ")]
    if not llama or not ours:
        return []
    lines = ["", "Decode per GB/s of memory bandwidth, probed just before each of 32 steps (median, quartiles); "
             "the goal ratios are read here:", "",
             "| engine | tok/s per GB/s | quartiles | llama.cpp counterpart | ratio |",
             "| --- | ---: | ---: | --- | ---: |"]  # fmt: skip
    for e in ours:
        variant = e["engine"].removeprefix("swarm ").removesuffix(" --no-spin")
        peer = llama.get(COUNTERPARTS.get(variant, ""))
        ratio = f"{e['decode_tok_s_per_gb_s'] / peer['decode_tok_s_per_gb_s']:.2f}x" if peer else "—"
        q1, _, q3 = e["decode_tok_s_per_gb_s_quartiles"]
        lines.append(f"| {e['engine']} | {e['decode_tok_s_per_gb_s']:.3f} | {q1:.3f} – {q3:.3f} | "
                     f"{peer['engine'] if peer else '—'} | {ratio} |")  # fmt: skip
    for e in llama.values():
        q1, _, q3 = e["decode_tok_s_per_gb_s_quartiles"]
        lines.append(f"| {e['engine']} | {e['decode_tok_s_per_gb_s']:.3f} | {q1:.3f} – {q3:.3f} | | |")
    return [*lines, ""]


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 2 threads, prompt 128, 32 new tokens, "
             "medians of 3 runs after a warm-up; every engine in its own process, one after another. "
             "`swarm X`: swarm-client's default, one onnxruntime pool for the process whose threads spin "
             "between ops; `--no-spin`: a pool per stage, asleep between ops, the SDK's default).", ""]  # fmt: skip
    for r in results:
        lines += [f"### {r['model']}", "", "| engine | prefill tok/s | decode tok/s | decode vs transformers |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        hf = next(e for e in r["engines"] if e["engine"].startswith("transformers"))["decode_tok_s"]
        for e in r["engines"]:
            lines.append(f"| {e['engine']} | {e['prefill_tok_s']:.1f} | {e['decode_tok_s']:.2f} | "
                         f"{e['decode_tok_s'] / hf:.2f}x |")  # fmt: skip
        f32 = [e for e in r["engines"] if e["engine"] in ("swarm float32", "swarm float32 --no-spin")]
        if f32[0]["weight_bytes_per_token"] < 100e6:
            lines += ["", "(Too small for the bandwidth floor to matter: per-token overhead dominates.)", ""]
        else:
            lines += normalized_lines(r["engines"])
            lines += [line for engine in f32 for line in floor_lines(engine)]
        if "quality" in r:
            lines += ["| package | perplexity on the fixed text | greedy tokens equal to float32 (of 40) |",
                      "| --- | ---: | ---: |"]  # fmt: skip
            lines += [f"| {q['variant']} | {q['perplexity']:.3f} | {q['greedy_agreement_with_float32']} |"
                      for q in r["quality"]]  # fmt: skip
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="stories260K,tinyllama-1.1b")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--skip-llamacpp", action="store_true", help="when llama-cpp-python is not installed")
    p.add_argument("--quality", type=Path, help=argparse.SUPPRESS)  # internal: one process per model
    args = p.parse_args()
    if args.quality:
        print(json.dumps(quality(args.quality, args.cache)))
        return
    results = [measure_model(m, args.cache, args.skip_llamacpp) for m in args.models.split(",")]
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "local.json").write_text(json.dumps(results, indent=2))
    command = "python bench/bench_local.py " + " ".join(sys.argv[1:])
    replace_section(REPO / "docs" / "BENCHMARKS.md", "local runner", markdown(results, command.strip()))


if __name__ == "__main__":
    main()
