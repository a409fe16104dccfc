"""Write a Hugging Face Llama checkpoint with random float32 weights, for benchmarks.

The weights are N(0, 0.02) (RMSNorm weights are ones), generated one tensor at a time and written
as safetensors shards of at most ``--shard-mb`` so peak memory stays near one shard. The tokenizer
is a synthetic SentencePiece BPE model (``tokenizer.model``) with exactly ``vocab_size`` pieces, plus
the ``tokenizer.json`` transformers derives from it, so both transformers and llama.cpp's
``convert_hf_to_gguf.py`` can load the folder. Its quality is irrelevant: benchmarks feed token ids.

A stamp file records shape and seed; a folder that already holds a complete checkpoint of the same
shape and seed is left alone, so benchmarks can call :func:`make_checkpoint` cheaply.

    python bench/make_checkpoint.py /work/bench-cache/tinyllama --shape tinyllama-1.1b
"""

from __future__ import annotations

import argparse
import itertools
import json
import string
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

STAMP_NAME = "bench_checkpoint_stamp.json"
STAMP_VERSION = 1
INDEX_NAME = "model.safetensors.index.json"
BYTE_PIECES = 256


@dataclass(frozen=True)
class Shape:
    """The architecture numbers of a Llama model."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


SHAPES: dict[str, Shape] = {
    "tinyllama-1.1b": Shape(22, 2048, 32, 4, 5632, 32000, 2048),
    # the stories15M/42M family's shape with TinyLlama's vocabulary: quick to build and to run
    "stories-like": Shape(6, 288, 6, 6, 768, 32000, 256),
}


# ---------------------------------------------------------------- config


def config_dict(shape: Shape) -> dict[str, object]:
    """config.json for LlamaForCausalLM (rope given both the v5 and the legacy way)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "head_dim": shape.head_dim,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_key_value_heads": shape.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_theta": shape.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


def write_configs(out: Path, shape: Shape) -> None:
    (out / "config.json").write_text(json.dumps(config_dict(shape), indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# ---------------------------------------------------------------- weights


def tensor_specs(shape: Shape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in file order: embeddings, layer by layer, norm, head."""
    h, kv = shape.hidden_size, shape.num_key_value_heads * shape.head_dim
    q = shape.num_attention_heads * shape.head_dim
    yield "model.embed_tokens.weight", (shape.vocab_size, h)
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate_proj.weight", (shape.intermediate_size, h)
        yield f"{p}.mlp.up_proj.weight", (shape.intermediate_size, h)
        yield f"{p}.mlp.down_proj.weight", (h, shape.intermediate_size)
    yield "model.norm.weight", (h,)
    if not shape.tie_word_embeddings:
        yield "lm_head.weight", (shape.vocab_size, h)


def make_tensor(name: str, dims: tuple[int, ...], seed: int) -> np.ndarray:
    """Ones for norms, N(0, 0.02) otherwise; each tensor seeded by (seed, name) alone."""
    if name.endswith("norm.weight"):
        return np.ones(dims, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    values = rng.standard_normal(dims, dtype=np.float32)
    values *= np.float32(0.02)
    return values


def plan_shards(shape: Shape, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group tensors, in order, into shards of at most shard_bytes (a bigger tensor gets its own)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensor_specs(shape):
        nbytes = 4 * int(np.prod(dims))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    return shards


def write_weights(out: Path, shape: Shape, seed: int, shard_bytes: int) -> None:
    """Write model.safetensors, or model-0000i-of-0000n.safetensors shards plus the index."""
    from safetensors.numpy import save_file

    shards = plan_shards(shape, shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, specs in zip(names, shards, strict=True):
        tensors = {name: make_tensor(name, dims, seed) for name, dims in specs}
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file_name))
        del tensors
        print(f"wrote {file_name} ({len(specs)} tensors)", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------- tokenizer


def synthetic_pieces(count: int) -> list[str]:
    """count distinct normal pieces; every multi-character piece is a merge of two shorter ones."""
    letters = string.ascii_lowercase
    singles = list(letters + string.ascii_uppercase + string.digits + ".,!?'\"-:;()")
    pieces = ["▁", *singles, *("▁" + c for c in singles)]
    for n in itertools.count(2):
        grams = ["".join(g) for g in itertools.product(letters, repeat=n)]
        pieces += [p for g in grams for p in ("▁" + g, g)]
        if len(pieces) >= count:
            return pieces[:count]
    raise AssertionError("unreachable")


def sentencepiece_model(vocab_size: int) -> bytes:
    """Serialized SentencePiece BPE ModelProto: <unk> <s> </s>, 256 byte pieces, synthetic pieces."""
    from sentencepiece import sentencepiece_model_pb2

    spm: Any = sentencepiece_model_pb2  # generated protobuf module: no static attributes
    model = spm.ModelProto()
    kind = spm.ModelProto.SentencePiece.Type
    specials = [("<unk>", kind.UNKNOWN), ("<s>", kind.CONTROL), ("</s>", kind.CONTROL)]
    for text, piece_type in specials:
        model.pieces.add(piece=text, score=0.0, type=piece_type)
    for b in range(BYTE_PIECES):
        model.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=kind.BYTE)
    normal = synthetic_pieces(vocab_size - len(specials) - BYTE_PIECES)
    for rank, text in enumerate(normal):
        model.pieces.add(piece=text, score=-float(rank), type=kind.NORMAL)
    trainer = model.trainer_spec
    trainer.model_type = spm.TrainerSpec.BPE
    trainer.vocab_size = vocab_size
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString()


def tokenizer_config(max_length: int) -> dict[str, object]:
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }


def write_tokenizer(out: Path, shape: Shape) -> None:
    """tokenizer.model (for llama.cpp), then tokenizer.json as transformers converts it."""
    (out / "tokenizer.model").write_bytes(sentencepiece_model(shape.vocab_size))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(shape.max_position_embeddings), indent=2) + "\n"
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    if len(tokenizer) != shape.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {shape.vocab_size}")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))


# ---------------------------------------------------------------- driver


def stamp(shape_name: str, seed: int) -> dict[str, object]:
    return {"version": STAMP_VERSION, "shape": shape_name, "seed": seed, **asdict(SHAPES[shape_name])}


def is_complete(out: Path, shape_name: str, seed: int) -> bool:
    path = out / STAMP_NAME
    try:
        return json.loads(path.read_text()) == stamp(shape_name, seed)
    except (OSError, ValueError):
        return False


def make_checkpoint(out: Path, shape_name: str = "tinyllama-1.1b", seed: int = 0, shard_mb: int = 1024) -> Path:
    """Write the checkpoint into out unless it is already there; returns out."""
    out = Path(out)
    if is_complete(out, shape_name, seed):
        print(f"{out}: complete {shape_name} checkpoint (seed {seed}) already there")
        return out
    shape = SHAPES[shape_name]
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_NAME).unlink(missing_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    write_configs(out, shape)
    write_tokenizer(out, shape)
    write_weights(out, shape, seed, shard_mb << 20)
    (out / STAMP_NAME).write_text(json.dumps(stamp(shape_name, seed), indent=2) + "\n")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="checkpoint folder to write (reused if complete)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b", help="model shape")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--shard-mb", type=int, default=1024, help="largest safetensors shard, in MiB")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    make_checkpoint(args.out, args.shape, args.seed, args.shard_mb)


if __name__ == "__main__":
    main()
