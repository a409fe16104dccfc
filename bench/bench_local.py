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
VARIANTS = {
    "float32": [],
    "int8": ["--quantize", "int8"],
    "int4": ["--quantize", "int4"],
    "int4 block 256": ["--quantize", "int4", "--block-size", "256"],
}


def checkpoint(name: str, cache: Path) -> Path:
    if name == "stories260K":
        return STORIES
    return make_checkpoint(cache / name, name)


def export(ckpt: Path, variant: str, cache: Path) -> Path:
    out = cache / "packages" / f"{ckpt.name}-{variant.replace(' ', '-')}"
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "export.cli", str(ckpt), str(out), "--force", "-q", *VARIANTS[variant]]
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
    for spin in (False, True):
        for variant in VARIANTS:
            package = export(ckpt, variant, cache)
            speed = run_json([sys.executable, "bench/engine_speed.py", str(package), *(["--spin"] if spin else [])])
            result["engines"].append({**speed, "engine": f"swarm {variant}" + (" --spin" if spin else "")})
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
    label = "with `--spin`" if f32.get("spin") else "default"
    return ["", f"Float32 decode ({label}) against the memory-bandwidth floor ({gb:.2f} GB read per token, "
            f"{f32['bandwidth_gb_s']} GB/s probed at the end): **{f32['ratio_to_floor']:.2f}x** (median of "
            f"per-step ratios, each step paired with a bandwidth probe just before it; quartiles "
            f"{q1:.2f} / {q2:.2f} / {q3:.2f}).", ""]  # fmt: skip


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 2 threads, prompt 128, 32 new tokens, "
             "medians of 3 runs after a warm-up; every engine in its own process, one after another; "
             "`--spin`: one onnxruntime pool for the process, its threads spinning between ops).", ""]  # fmt: skip
    for r in results:
        lines += [f"### {r['model']}", "", "| engine | prefill tok/s | decode tok/s | decode vs transformers |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        hf = next(e for e in r["engines"] if e["engine"].startswith("transformers"))["decode_tok_s"]
        for e in r["engines"]:
            lines.append(f"| {e['engine']} | {e['prefill_tok_s']:.1f} | {e['decode_tok_s']:.2f} | "
                         f"{e['decode_tok_s'] / hf:.2f}x |")  # fmt: skip
        f32 = [e for e in r["engines"] if e["engine"] in ("swarm float32", "swarm float32 --spin")]
        if f32[0]["weight_bytes_per_token"] < 100e6:
            lines += ["", "(Too small for the bandwidth floor to matter: per-token overhead dominates.)", ""]
        else:
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
