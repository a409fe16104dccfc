"""`swarm-client`: generate text and chat, locally or through a swarm.

Generated text goes to stdout; progress, statistics and errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from swarm.errors import SwarmError
from swarm.generation import GenerationStats


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = one per core)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm-client", description="Use a language model served by a swarm.")
    sub = p.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete a prompt and print the text")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument(
        "--local", metavar="PKG", required=True, help="run the model package PKG in this process"
    )
    gen.add_argument("--quiet", action="store_true", help="no statistics on stderr")
    _add_sampling_flags(gen)
    return p


def _print_stream(pieces: Iterator[str]) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _stats_line(stats: GenerationStats) -> str:
    return (
        f"{stats.prompt_tokens} prompt tokens, {stats.generated_tokens} new; "
        f"time to first token {stats.ttft_s * 1000:.0f} ms, decode {stats.decode_tokens_per_s:.1f} tokens/s"
    )


def _generate(args: argparse.Namespace) -> int:
    from swarm.local import LocalModel
    from swarm.runtime import RuntimeOptions

    model = LocalModel(args.local, RuntimeOptions(threads=args.threads))
    stats = GenerationStats()
    pieces = model.stream(
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_on_eos=not args.ignore_eos,
        stats=stats,
    )
    _print_stream(pieces)
    if not args.quiet:
        print(_stats_line(stats), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _generate(args)
    except SwarmError as exc:
        print(f"swarm-client: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nswarm-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
