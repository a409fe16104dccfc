"""llama.cpp's RPC backend on emulated links: the llama.cpp baseline of issue 18's table.

    python bench/llamacpp_rpc.py GGUF --nodes 1,2,3,4 --rtt-ms 0,2,5,10,20,40 \
        [--prompt-tokens 64 --new-tokens 32 --threads 1 --generations 3 --validate --perplexity --host-share --mbit M]

One point (N nodes, a per-hop round trip) is N `rpc-server` processes on 127.0.0.1, each behind a
relay of bench/links.py that holds every chunk for RTT/2 each way, and one client process: the
llama.cpp main host, which registers the relays' addresses as RPC devices and offloads every layer
to them (`n_gpu_layers=-1`; llama.cpp splits the layers by the devices' free memory, here equal, and
puts the output layer on the last device). The client keeps only the token embeddings (a row
lookup) and the sampling, as our swarm client does, so N nodes are N devices each holding a share
of the layers behind a link. llama.cpp's topology is a star: the client talks to every server, and
activations between two servers pass through the client.

The rpc-server is ggml's own server loop, `ggml_backend_rpc_start_server(endpoint, cache_dir,
n_threads, n_devices, devices)` (RPC protocol 7, llama-cpp-python 0.3.36 built with -DGGML_RPC=ON),
called through ctypes on the CPU device; the wheel ships no rpc-server executable.

Timing is the swarm's (swarm.generation.GenerationStats): TTFT from the prompt's submission to the
first token (prefill + argmax), one decode step per further token, decode tok/s = (tokens - 1) /
(first token -> last token). The relays count what crossed each link during the decode steps:
chunks and bytes per direction per token. `--validate` checks that the RPC setup's greedy tokens
equal llama.cpp's local (no RPC) greedy tokens; `--perplexity` adds llama.cpp's perplexity of
bench/bench_gguf.py's text, locally and through the RPC devices.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rpc_summary import Replies, decode_summary, layer_devices, link_counts  # noqa: E402

RESULT_MARK = "RPC-RESULT "
LOAD_MARK = "RPC-LOAD-START"
READY_TIMEOUT_S = 30.0
CPU_DEVICE = 0  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU


# ---------------------------------------------------------------- ggml through ctypes


def ggml_libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """The libggml and libggml-rpc that libllama itself uses (their registry of devices).

    The wheel's lib folder holds copies, not links: libggml.so and libggml.so.0 are two files, so
    loading the unversioned name would make a second, separate device registry that llama.cpp
    never sees. libllama needs libggml.so.0, so those are the ones.
    """
    import llama_cpp  # loads libllama and with it libggml.so.0 and libggml-rpc.so.0

    lib = Path(llama_cpp.__file__).parent / "lib"
    ggml, rpc = ctypes.CDLL(str(lib / "libggml.so.0")), ctypes.CDLL(str(lib / "libggml-rpc.so.0"))
    ggml.ggml_backend_dev_by_type.argtypes, ggml.ggml_backend_dev_by_type.restype = [ctypes.c_int], ctypes.c_void_p
    ggml.ggml_backend_register.argtypes, ggml.ggml_backend_register.restype = [ctypes.c_void_p], None
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    rpc.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                                  ctypes.POINTER(ctypes.c_void_p)]  # fmt: skip
    rpc.ggml_backend_rpc_start_server.restype = None
    return ggml, rpc


def serve(port: int, threads: int) -> None:
    """Run an rpc-server on 127.0.0.1:port exposing this host's CPU device; never returns."""
    ggml, rpc = ggml_libs()
    cpu = ggml.ggml_backend_dev_by_type(CPU_DEVICE)
    if not cpu:
        raise RuntimeError("ggml has no CPU device")
    devices = (ctypes.c_void_p * 1)(cpu)
    rpc.ggml_backend_rpc_start_server(f"127.0.0.1:{port}".encode(), None, threads, 1, devices)


def register_servers(endpoints: Sequence[str]) -> None:
    """Make each endpoint an RPC device of this process; later Llama(...) loads offload to them."""
    ggml, rpc = ggml_libs()
    for endpoint in endpoints:
        reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise RuntimeError(f"cannot reach the rpc-server at {endpoint}")
        ggml.ggml_backend_register(reg)


# ---------------------------------------------------------------- server processes


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return  # the server takes the probe as a client that closed at once
        time.sleep(0.1)
    raise TimeoutError(f"rpc-server on port {port} did not listen within {timeout_s} s")


@contextlib.contextmanager
def rpc_servers(n: int, threads: int, log_dir: Path) -> Iterator[list[str]]:
    """n rpc-server processes; their endpoints. Every process is killed on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = []
        for i, port in enumerate(free_ports(n)):
            log = open(log_dir / f"rpc-server-{i}.log", "wb")  # noqa: SIM115 (the process owns it)
            cmd = [sys.executable, str(Path(__file__).resolve()), "serve", str(port), "--threads", str(threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env))
            log.close()
            wait_listening(port, procs[-1])
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# ---------------------------------------------------------------- the client process


def prompt_ids(vocab: int, length: int) -> list[int]:
    """bench/bench_swarm.py's prompt: the same ids for every engine."""
    return [3 + (i * 7919) % (vocab - 3) for i in range(length)]


def load(gguf: Path, threads: int, n_ctx: int, n_gpu_layers: int, verbose: bool = False) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_gpu_layers=n_gpu_layers, verbose=verbose)  # fmt: skip


def offloaded_layers(gguf: Path, host_share: int) -> int:
    """n_gpu_layers: all (-1), or all but the first 1/host_share of the blocks, which stay on this host.

    llama.cpp counts the output layer as one more offloadable layer and keeps the first
    n_layer + 1 - n_gpu_layers blocks on the CPU.
    """
    if host_share <= 0:
        return -1
    from llama_cpp import Llama

    meta = Llama(model_path=str(gguf), vocab_only=True, verbose=False).metadata
    n_layer = int(meta[f"{meta['general.architecture']}.block_count"])
    return n_layer + 1 - round(n_layer / host_share)


def greedy(llm: Any, prompt: list[int], tokens: int, links: Any = None) -> tuple[list[int], float, list[float], Any]:
    """Greedy tokens from an empty cache: (tokens, TTFT s, decode step s, link stats during the steps)."""
    from bench.baselines import llama_next_token

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    out = [llama_next_token(llm)]
    ttft = time.perf_counter() - start
    before = snapshot(links)
    steps = []
    for _ in range(tokens - 1):
        t = time.perf_counter()
        llm.eval([out[-1]])
        out.append(llama_next_token(llm))
        steps.append(time.perf_counter() - t)
    return out, ttft, steps, (before, snapshot(links))


def snapshot(links: Any) -> list[dict[str, int]]:
    if links is None:
        return []
    replies = getattr(links, "replies", None)
    return [{"fwd_chunks": s.forward.chunks, "fwd_bytes": s.forward.bytes, "back_chunks": s.backward.chunks,
             "back_bytes": s.backward.bytes, "connections": s.connections,
             "replies": replies.replies[i] if replies else 0} for i, s in enumerate(links.stats())]  # fmt: skip


class _NotingReader:
    """A stream reader that tells `note` whenever a read brought data."""

    def __init__(self, reader: Any, note: Any) -> None:
        self.reader, self.note = reader, note

    async def read(self, n: int) -> bytes:
        data: bytes = await self.reader.read(n)
        if data:
            self.note()
        return data


def count_replies(links: Any) -> None:
    """Make `links` count each link's replies (bench.rpc_summary.Replies): the round trips waited.

    The rpc-server only ever answers, so every run of server -> client chunks after client ->
    server ones is the reply to a command the client waits for.
    """
    import bench.links

    links.replies = Replies()
    plain = bench.links.pump

    async def pump(reader: Any, writer: Any, schedule: Any, counts: Any) -> None:
        for i, relay in enumerate(links.relays):
            if counts is relay.stats.forward or counts is relay.stats.backward:
                back = counts is relay.stats.backward
                reader = _NotingReader(reader, lambda i=i, back=back: links.replies.saw(i, back))
        await plain(reader, writer, schedule, counts)

    bench.links.pump = pump


def perplexity(gguf: Path, llm_for_ids: Any) -> float:
    """bench/bench_gguf.py's perplexity of its fixed text (token ids from llama.cpp's own tokenizer)."""
    from bench.bench_gguf import TEXT, llama_perplexity

    ids = llm_for_ids.tokenize(TEXT.encode(), add_bos=False)
    return llama_perplexity(gguf, ids)


def client(args: argparse.Namespace) -> dict[str, Any]:
    from bench.links import LinkEmulator, LinkProfile

    gguf, endpoints = Path(args.gguf), [e for e in args.servers.split(",") if e]
    n_ctx = max(256, args.prompt_tokens + args.new_tokens + 8)
    result: dict[str, Any] = {}
    if args.validate or args.perplexity:  # before any RPC device exists: plain local llama.cpp
        local = load(gguf, args.threads, n_ctx, n_gpu_layers=0)
        prompt = prompt_ids(local.n_vocab(), args.prompt_tokens)
        result["local_tokens"] = greedy(local, prompt, args.new_tokens)[0]
        if args.perplexity:
            result["perplexity_local"] = round(perplexity(gguf, local), 4)
        del local
    profile = LinkProfile(delay_s=args.rtt_ms / 2e3, bandwidth_bps=args.mbit * 1e6 if args.mbit else None)
    with LinkEmulator() as links:
        count_replies(links)
        addresses = [links.relay(e, profile) for e in endpoints]
        register_servers(addresses)
        print(LOAD_MARK, file=sys.stderr, flush=True)
        t = time.perf_counter()
        llm = load(gguf, args.threads, n_ctx, offloaded_layers(gguf, args.host_share), verbose=True)
        result["load_s"] = round(time.perf_counter() - t, 3)
        result["load_bytes_to_servers"] = sum(s["fwd_bytes"] for s in snapshot(links))
        prompt = prompt_ids(llm.n_vocab(), args.prompt_tokens)
        greedy(llm, prompt, min(4, args.new_tokens))  # warm-up
        runs = [greedy(llm, prompt, args.new_tokens, links) for _ in range(args.generations)]
        result["tokens"] = runs[-1][0]
        result["same_tokens_every_run"] = all(r[0] == runs[0][0] for r in runs)
        result.update(decode_summary([r[1] for r in runs], [r[2] for r in runs]))
        result["links"] = link_counts([r[3] for r in runs], len(runs) * (args.new_tokens - 1))
        if args.perplexity:
            result["perplexity_rpc"] = round(perplexity(gguf, llm), 4)
        del llm
    if "local_tokens" in result:
        result["matches_local_greedy"] = result["tokens"] == result["local_tokens"]
    return result


# ---------------------------------------------------------------- one point, a sweep


def measure_llamacpp_rpc(
    gguf_path: Path | str,
    nodes: int,
    rtt_ms: float,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    threads: int = 1,
    generations: int = 3,
    validate: bool = False,
    with_perplexity: bool = False,
    host_share: bool = False,
    mbit: float | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """llama.cpp RPC with `nodes` rpc-servers behind links of `rtt_ms` round trip each (and `mbit`
    Mbit/s each way, if given; the model's upload at load time crosses them too).

    Returns decode_tok_s, tpot_ms_p50/p95, ttft_ms_p50/p95, per-link counts per decode token
    ("links"), the layers each device got ("layers_per_device"), the greedy tokens, and with
    `validate` whether they equal local llama.cpp's ("matches_local_greedy"). With `host_share`
    the client is one of the nodes: nodes - 1 rpc-servers, and the client keeps the first
    1/nodes of the layers on its own CPU (mesh-llm's setup: the host runs a share itself).
    """
    gguf = Path(gguf_path).resolve()
    servers = nodes - 1 if host_share else nodes
    with tempfile.TemporaryDirectory(prefix="llamacpp-rpc-") as tmp, rpc_servers(servers, threads, Path(tmp)) as eps:
        cmd = [sys.executable, str(Path(__file__).resolve()), "client", str(gguf), "--servers", ",".join(eps),
               "--rtt-ms", str(rtt_ms), "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
               "--threads", str(threads), "--generations", str(generations),
               "--host-share", str(nodes if host_share else 0)]  # fmt: skip
        cmd += ["--validate"] if validate else []
        cmd += ["--perplexity"] if with_perplexity else []
        cmd += ["--mbit", str(mbit)] if mbit else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if done.returncode != 0 or not lines:
            logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted(Path(tmp).glob("*.log")))
            raise RuntimeError(f"llama.cpp RPC client failed ({done.returncode}):\n{done.stderr[-4000:]}\n{logs}")
        result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    log = done.stderr.split(LOAD_MARK, 1)[-1]
    result["layers_per_device"] = layer_devices(log)
    expected = {f"RPC{i}" for i in range(servers)} | ({"CPU"} if host_share else set())
    if set(result["layers_per_device"]) != expected:
        raise RuntimeError(f"layers did not land on {sorted(expected)}: {result['layers_per_device']}")
    return {"engine": "llama.cpp RPC", "gguf": str(gguf), "nodes": nodes, "rtt_ms": rtt_ms, "mbit": mbit,
            "setup": "host + rpc-servers" if host_share else "rpc-servers",
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "threads": threads,
            "generations": generations, **result}  # fmt: skip


def sweep(gguf: Path, nodes: Sequence[int], rtts: Sequence[float], **kwargs: Any) -> list[dict[str, Any]]:
    rows = []
    for n in nodes:
        for rtt in rtts:
            row = measure_llamacpp_rpc(gguf, n, rtt, **kwargs)
            rows.append(row)
            brief = {k: row[k] for k in ("nodes", "rtt_ms", "decode_tok_s", "tpot_ms_p50", "ttft_ms_p50")}
            print(json.dumps(brief), file=sys.stderr, flush=True)
    return rows


def parse_list(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        p = argparse.ArgumentParser(prog="llamacpp_rpc.py serve")
        p.add_argument("_", choices=["serve"])
        p.add_argument("port", type=int)
        p.add_argument("--threads", type=int, default=1)
        a = p.parse_args(argv)
        serve(a.port, a.threads)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    client_mode = argv[:1] == ["client"]
    if client_mode:
        p.add_argument("_", choices=["client"])
        p.add_argument("--servers", required=True, help="host:port,... of the rpc-servers")
        p.add_argument("--rtt-ms", type=float, default=0.0)
        p.add_argument("--host-share", type=int, default=0, help="keep 1/N of the layers here (0: none)")
    else:
        p.add_argument("--nodes", default="1,2,3,4")
        p.add_argument("--rtt-ms", default="0,2,5,10,20,40")
        p.add_argument("--out", type=Path, help="write the rows as JSON here")
        host = "the client is a node too: N-1 rpc-servers, the client runs the first 1/N of the layers"
        p.add_argument("--host-share", action="store_true", help=host)
    p.add_argument("gguf", help="GGUF file")
    p.add_argument("--mbit", type=float, default=None, help="bandwidth of every link, Mbit/s each way")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every process")
    p.add_argument("--generations", type=int, default=3, help="timed generations after a warm-up")
    p.add_argument("--validate", action="store_true", help="compare the greedy tokens with local llama.cpp")
    p.add_argument("--perplexity", action="store_true", help="llama.cpp's perplexity, local and over RPC")
    a = p.parse_args(argv)
    if client_mode:
        print(RESULT_MARK + json.dumps(client(a)), flush=True)
        return
    rows = sweep(Path(a.gguf), parse_list(a.nodes, int), parse_list(a.rtt_ms, float),
                 prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, threads=a.threads,
                 generations=a.generations, validate=a.validate, with_perplexity=a.perplexity,
                 host_share=a.host_share, mbit=a.mbit)  # fmt: skip
    text = json.dumps({"command": "python bench/llamacpp_rpc.py " + " ".join(argv), "rows": rows}, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
