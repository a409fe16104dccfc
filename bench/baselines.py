"""Baseline speeds to compare swarm with: transformers (eager, float32) and llama.cpp (GGUF).

Both measure, on random prompt token ids, prefill (one forward over the prompt) and greedy decode
(one token at a time with the KV cache, end-of-sequence ignored) separately, after a warm-up run.
Each measurement is repeated; the dicts give the median and every run.

    python bench/baselines.py transformers CKPT [--prompt-len 128 --new-tokens 32 --threads 2]
    python bench/baselines.py llamacpp CKPT --types F32,F16,Q8_0,Q4_K_M [--gguf-dir DIR]
    python bench/baselines.py gguf CKPT --types F32,Q8_0      # only build (and cache) the GGUF files

llama.cpp comes from llama-cpp-python (see bench/LLAMA_CPP.md for how to build it); the HF to GGUF
conversion runs the ``convert_hf_to_gguf.py`` vendored in the matching llama-cpp-python source
distribution, found in ``$LLAMA_CPP_SRC`` or fetched once with ``pip download`` into the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run as a script, it still imports bench.bandwidth
DEFAULT_CACHE = Path(os.environ.get("SWARM_BENCH_CACHE", BENCH_DIR / "out"))
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_K_M")
# llama_ftype values (llama.h) for the types made with llama_model_quantize
QUANT_FTYPES = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}


# ---------------------------------------------------------------- shared helpers


def random_prompt(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    """Random token ids, avoiding the first few (special) ids."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, vocab_size, size=length)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summarize(prefill_s: Sequence[float], decode_s: Sequence[float], prompt_len: int, new_tokens: int) -> dict:
    """Tokens per second (median over runs, and each run) from run times in seconds."""
    prefill = [prompt_len / s for s in prefill_s]
    decode = [new_tokens / s for s in decode_s]
    return {
        "prefill_tok_s": round(statistics.median(prefill), 2),
        "decode_tok_s": round(statistics.median(decode), 2),
        "prefill_tok_s_runs": [round(x, 2) for x in prefill],
        "decode_tok_s_runs": [round(x, 2) for x in decode],
    }


def run_info(prompt_len: int, new_tokens: int, threads: int, repeats: int) -> dict:
    return {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "threads": threads,
        "repeats": repeats,
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------- transformers


def load_transformers(ckpt_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype="float32", attn_implementation="eager")
    return model.eval()


def hf_prefill(model: Any, ids: Any) -> tuple[Any, Any]:
    """One forward over the prompt; returns (next token [1, 1], KV cache)."""
    out = model(input_ids=ids, use_cache=True)
    return out.logits[:, -1:].argmax(-1), out.past_key_values


def hf_decode(model: Any, token: Any, cache: Any, steps: int) -> list[int]:
    """Greedy decode: feed one token at a time through the KV cache."""
    produced = []
    for _ in range(steps):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        produced.append(int(token))
    return produced


def hf_run(model: Any, ids: Any, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one generation."""
    start = time.perf_counter()
    token, cache = hf_prefill(model, ids)
    mid = time.perf_counter()
    hf_decode(model, token, cache, new_tokens)
    return mid - start, time.perf_counter() - mid


def transformers_speed(
    ckpt_dir: Path | str, prompt_len: int = 128, new_tokens: int = 32, threads: int = 2, repeats: int = 3
) -> dict:
    """Prefill and greedy-decode tokens/s of transformers (eager attention, float32)."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = load_transformers(Path(ckpt_dir))
    ids = torch.tensor([random_prompt(model.config.vocab_size, prompt_len)])
    with torch.inference_mode():
        hf_run(model, ids, min(new_tokens, 4))  # warm-up
        times = [hf_run(model, ids, new_tokens) for _ in range(repeats)]
    return {
        "engine": "transformers",
        "checkpoint": str(ckpt_dir),
        "dtype": "float32",
        "attention": "eager",
        **summarize([t[0] for t in times], [t[1] for t in times], prompt_len, new_tokens),
        **run_info(prompt_len, new_tokens, threads, repeats),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- GGUF files


def llama_cpp_version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def fetch_llama_cpp_source(cache: Path, version: str) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist of this version, downloaded once with pip."""
    root = cache / f"llama_cpp_python-{version}"
    source = root / "vendor" / "llama.cpp"
    if (source / "convert_hf_to_gguf.py").exists():
        return source
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
    subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True)
    with tarfile.open(cache / f"llama_cpp_python-{version}.tar.gz") as archive:
        archive.extractall(cache, filter="data")
    return source


def llama_cpp_source(cache: Path) -> Path:
    """Folder with convert_hf_to_gguf.py: $LLAMA_CPP_SRC, else the sdist matching the installed build."""
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        return Path(env)
    return fetch_llama_cpp_source(cache / "llama-cpp-src", llama_cpp_version())


def is_fresh(target: Path, sources: Iterable[Path]) -> bool:
    """target exists and is newer than every source file."""
    if not target.exists():
        return False
    newest = max((p.stat().st_mtime for p in sources if p.is_file()), default=0.0)
    return target.stat().st_mtime >= newest


def convert_to_f32(ckpt_dir: Path, target: Path, cache: Path) -> None:
    """HF checkpoint to GGUF F32 with llama.cpp's convert_hf_to_gguf.py."""
    script = llama_cpp_source(cache) / "convert_hf_to_gguf.py"
    partial = target.with_suffix(".partial")
    command = [sys.executable, str(script), str(ckpt_dir), "--outtype", "f32", "--outfile", str(partial)]
    subprocess.run(command, check=True)
    partial.replace(target)


def quantize(source: Path, target: Path, gguf_type: str, threads: int) -> None:
    """llama_model_quantize from source (F32) to target of gguf_type."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[gguf_type]
    params.nthread = threads
    partial = target.with_suffix(".partial")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize to {gguf_type} failed with {code}")
    partial.replace(target)


def build_gguf(
    ckpt_dir: Path | str,
    out_dir: Path | str,
    types: Sequence[str] = GGUF_TYPES,
    threads: int = 2,
    cache: Path = DEFAULT_CACHE,
) -> dict[str, Path]:
    """GGUF files of the checkpoint, {type: path}: F32 converted, the others quantized from it.

    Files newer than every checkpoint file are reused.
    """
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    unknown = set(types) - set(GGUF_TYPES)
    if unknown:
        raise ValueError(f"unsupported GGUF types {sorted(unknown)}; known: {GGUF_TYPES}")
    out.mkdir(parents=True, exist_ok=True)
    name = ckpt.resolve().name
    paths = {t: out / f"{name}-{t}.gguf" for t in GGUF_TYPES}
    f32 = paths["F32"]
    if not is_fresh(f32, ckpt.iterdir()):
        convert_to_f32(ckpt, f32, cache)
    for gguf_type in types:
        if gguf_type != "F32" and not is_fresh(paths[gguf_type], [f32]):
            quantize(f32, paths[gguf_type], gguf_type, threads)
    return {t: paths[t] for t in types}


# ---------------------------------------------------------------- llama.cpp


def load_llama(gguf_path: Path, threads: int, n_ctx: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def llama_next_token(llm: Any) -> int:
    """Argmax of the logits of the last evaluated token."""
    import llama_cpp

    logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return int(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).argmax())


def llama_run(llm: Any, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation from an empty KV cache."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    token = llama_next_token(llm)
    mid = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = llama_next_token(llm)
    return mid - start, time.perf_counter() - mid


def llama_paired_decode(llm: Any, ids: list[int], steps: int, threads: int) -> dict:
    """Decode tok/s per GB/s of bandwidth probed before each step (as bench/engine_speed.py)."""
    from bench.bandwidth import BandwidthProbe, paired_steps, per_bandwidth

    probe = BandwidthProbe(threads=threads, gib=1.0)
    probe.measure(1)
    llm.reset()
    llm.eval(ids)

    def step() -> None:
        llm.eval([llama_next_token(llm)])

    return per_bandwidth(paired_steps(probe, step, steps))


def llamacpp_speed(
    gguf_path: Path | str,
    prompt_len: int = 128,
    new_tokens: int = 32,
    threads: int = 2,
    repeats: int = 3,
    n_ctx: int = 512,
) -> dict:
    """Prefill and greedy-decode tokens/s of llama.cpp on one GGUF file."""
    import llama_cpp

    llm = load_llama(Path(gguf_path), threads, n_ctx)
    ids = random_prompt(llm.n_vocab(), prompt_len)
    llama_run(llm, ids, min(new_tokens, 4))  # warm-up (also pages in the mmapped weights)
    times = [llama_run(llm, ids, new_tokens) for _ in range(repeats)]
    return {
        **llama_paired_decode(llm, ids[:16], new_tokens, threads),
        "engine": "llama.cpp",
        "gguf": str(gguf_path),
        "n_ctx": n_ctx,
        **summarize([t[0] for t in times], [t[1] for t in times], prompt_len, new_tokens),
        **run_info(prompt_len, new_tokens, threads, repeats),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=["transformers", "llamacpp", "gguf"], help="what to run")
    parser.add_argument("checkpoint", type=Path, help="Hugging Face Llama checkpoint folder")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (prefill)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens to decode")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--types", default="F32", help=f"comma-separated GGUF types from {','.join(GGUF_TYPES)}")
    parser.add_argument("--gguf-dir", type=Path, help="where GGUF files go (default: cache/gguf/NAME)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache folder ($SWARM_BENCH_CACHE)")
    return parser.parse_args(argv)


def run_llamacpp(args: argparse.Namespace, bench: bool) -> list[dict]:
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    gguf_dir = args.gguf_dir or args.cache / "gguf" / args.checkpoint.resolve().name
    files = build_gguf(args.checkpoint, gguf_dir, types, args.threads, args.cache)
    if not bench:
        return [{"type": t, "gguf": str(p), "bytes": p.stat().st_size} for t, p in files.items()]
    results = []
    for gguf_type, path in files.items():
        result = llamacpp_speed(path, args.prompt_len, args.new_tokens, args.threads, args.repeats)
        results.append({"type": gguf_type, **result})
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.engine == "transformers":
        results = [transformers_speed(args.checkpoint, args.prompt_len, args.new_tokens, args.threads, args.repeats)]
    else:
        results = run_llamacpp(args, bench=args.engine == "llamacpp")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
