"""Where an export reads a model from: a Hugging Face checkpoint folder or a GGUF file.

Both end up as the same four things: weights under Hugging Face names (`WeightSource`), the
`ModelSpec` the graph builders follow, a tokenizer.json with its manifest facts, and a name.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from export.chat_templates import family_chat_template
from export.checkpoint import WeightSource, open_checkpoint
from export.errors import ExportError
from export.families import read_spec
from export.gguf_file import GgufCheckpoint, is_gguf, open_gguf
from export.gguf_tokenizer import tokenizer_from_gguf
from export.spec import ModelSpec
from export.tokenizer_info import TOKENIZER_FILE, read_tokenizer_info
from swarm.package import TokenizerInfo, sha256_file


@dataclass(frozen=True)
class Source:
    weights: WeightSource
    spec: ModelSpec
    name: str
    write_tokenizer: Callable[[Path], TokenizerInfo]  # writes tokenizer.json into a folder
    holds_blocks: bool  # weights are quantized blocks (GGUF): by default they are kept as they are
    float_storage: str = "float32"  # the storage of float weights kept as the source has them
    native_quantization: str | None = None  # what the manifest calls the source's own formats
    provenance: dict[str, str] = field(default_factory=dict)


def _checkpoint_folder(src: Path) -> Source:
    ckpt = open_checkpoint(src)
    generation_path = src / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    spec = read_spec(ckpt.config, generation)
    info = read_tokenizer_info(src, spec)  # checked before anything is written

    def write_tokenizer(folder: Path) -> TokenizerInfo:
        shutil.copyfile(src / TOKENIZER_FILE, folder / TOKENIZER_FILE)
        return info

    name = src.resolve().name
    return Source(ckpt, spec, name, write_tokenizer, holds_blocks=False, provenance={"checkpoint": name})


def _model_name(gguf: Path) -> str:
    """The model's name as GGUF files are named: the file name without its quantization suffix
    ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"); general.name is often a run name."""
    return re.sub(r"[.\-_](i?q\d\w*|f16|f32|bf16)$", "", gguf.stem, flags=re.IGNORECASE) or gguf.stem


def _gguf_file(src: Path) -> Source:
    ckpt: GgufCheckpoint = open_gguf(src)
    spec = read_spec(ckpt.config)
    tok = tokenizer_from_gguf(ckpt.fields)

    def write_tokenizer(folder: Path) -> TokenizerInfo:
        path = folder / TOKENIZER_FILE
        tok.tokenizer.save(str(path))
        return TokenizerInfo(
            file=TOKENIZER_FILE,
            sha256=sha256_file(path),
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            bos_token_id=tok.bos_token_id,
            eos_token_ids=tuple(tok.eos_token_ids),
            # a GGUF without a template gets its family's, as llama.cpp falls back to it
            chat_template=tok.chat_template or family_chat_template(str(ckpt.fields.get("general.architecture"))),
        )

    types = ", ".join(f"{t} x{n}" for t, n in sorted(ckpt.type_counts().items()))
    name = _model_name(src)
    provenance = {"gguf": src.name, "gguf_tensor_types": types}
    return Source(ckpt, spec, name, write_tokenizer, True, ckpt.float_storage(), ckpt.native_quantization(), provenance)


_WHAT_TO_GIVE = "give a Hugging Face checkpoint folder or a .gguf file"


def open_source(src: str | Path) -> Source:
    src = Path(src)
    if src.is_dir():
        return _checkpoint_folder(src)
    if src.is_file():
        if is_gguf(src) or src.suffix.lower() == ".gguf":
            return _gguf_file(src)
        raise ExportError(f"{src} is not a folder nor a GGUF file; {_WHAT_TO_GIVE}")
    raise ExportError(f"{src} is not a folder (it does not exist); {_WHAT_TO_GIVE}")
