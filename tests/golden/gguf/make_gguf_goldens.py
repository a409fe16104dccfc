"""Golden outputs of transformers for a real GGUF model, dequantized to float32.

Needs torch + transformers + accelerate + gguf (the golden extra); the tests that read the
results need none of them. Run with the GGUF file's path:

    python tests/golden/gguf/make_gguf_goldens.py smollm2 /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python tests/golden/gguf/make_gguf_goldens.py gemma3 /tmp/models/gemma-3-270m-q4_k_m.gguf

Writes tests/golden/gguf/<name>.npz: per prompt its input ids (with BOS as the GGUF's add_bos
says: llama.cpp's behaviour, which our tokenizer follows), transformers' logits at a fixed subset
of the vocabulary (its own top 64 at each position and 192 drawn ones) for every prefill position
and 8 cached greedy decode steps, and 64 greedy tokens. The whole logit rows would be 196 KB each
(1 MB for Gemma's 262,144 tokens). A GGUF without a chat template (Gemma 3 270M) is given the family
template the exporter falls back to (export/chat_templates.py), so both render the same prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository: export.chat_templates needs no torch
from export.chat_templates import family_chat_template  # noqa: E402

DECODE_STEPS = 8
GREEDY_TOKENS = 64
TOP = 64
DRAWN = 192

CHAT_QUESTION = "What is the capital of France?"
PLAIN_PROMPTS = {
    "story": "Once upon a time, in a small village by the sea,",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
}
# per model: Gemma 3 270M is a base model (its chat answer is no answer), asked to complete text instead
EXTRA_PROMPTS = {
    "gemma3": {"capital": "The capital of France is", "question": "Question: What is the capital of France?\nAnswer:"}
}


def _gguf_facts(path: Path) -> tuple[bool, int | None, str | None]:
    """(add BOS, BOS id, chat template: the file's, or its family's where it has none)."""
    fields = GGUFReader(path).fields
    add = fields.get("tokenizer.ggml.add_bos_token")
    bos = fields.get("tokenizer.ggml.bos_token_id")
    template = fields.get("tokenizer.chat_template")
    arch = str(fields["general.architecture"].contents())
    chat = str(template.contents()) if template else family_chat_template(arch)
    return (bool(add.contents()) if add else False), (int(bos.contents()) if bos else None), chat


def _prompts(tok: AutoTokenizer, path: Path, name: str) -> dict[str, list[int]]:
    add_bos, bos, template = _gguf_facts(path)
    prompts = {}
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT_QUESTION}], add_generation_prompt=True,
                                   tokenize=False, chat_template=template)  # fmt: skip
    # the template writes its own first token; a BOS would only be added when it does not
    prompts["chat"] = tok(chat, add_special_tokens=False).input_ids
    for case, text in {**PLAIN_PROMPTS, **EXTRA_PROMPTS.get(name, {})}.items():
        ids = tok(text, add_special_tokens=False).input_ids
        prompts[case] = ([bos] if add_bos and bos is not None else []) + ids
    return prompts


@torch.no_grad()
def _case(model: AutoModelForCausalLM, ids: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    vocab = model.config.vocab_size
    drawn = rng.choice(vocab, DRAWN, replace=False)
    out = model(torch.tensor([ids]), use_cache=True)
    prefill = out.logits[0].float().numpy()  # (S, V)
    past = out.past_key_values
    decode_rows, decode_ids = [], []
    token = int(prefill[-1].argmax())
    for _ in range(DECODE_STEPS):
        decode_ids.append(token)
        out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        row = out.logits[0, -1].float().numpy()
        decode_rows.append(row)
        token = int(row.argmax())
    rows = np.concatenate([prefill, np.stack(decode_rows)])  # (S + steps, V)
    top = np.argsort(-rows, axis=1)[:, :TOP]
    index = np.concatenate([top, np.broadcast_to(drawn, (rows.shape[0], DRAWN))], axis=1)
    greedy, greedy_rows = _greedy(model, ids)
    ordered = np.sort(np.concatenate([rows, greedy_rows]), axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    return {
        "input_ids": np.array(ids, np.int64),
        "decode_ids": np.array(decode_ids, np.int64),
        "logit_index": index.astype(np.int32),
        "logits": np.take_along_axis(rows, index, axis=1).astype(np.float32),
        "greedy_ids": np.array(greedy, np.int64),
        "min_margin": np.float32(margins.min()),
    }


@torch.no_grad()
def _greedy(model: AutoModelForCausalLM, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """GREEDY_TOKENS argmax steps, end-of-turn tokens included (generate() would stop or, with
    min_new_tokens, forbid them): the plain continuation the tests reproduce."""
    out = model(torch.tensor([ids]), use_cache=True)
    rows, tokens = [], []
    for _ in range(GREEDY_TOKENS):
        row = out.logits[0, -1].float().numpy()
        rows.append(row)
        tokens.append(int(row.argmax()))
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, np.stack(rows)


def main(name: str, gguf: str) -> None:
    path = Path(gguf).resolve()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {"gguf": path.name, "prompts": {}}
    for case, ids in _prompts(tok, path, name).items():
        result = _case(model, ids, rng)
        for key, value in result.items():
            arrays[f"{case}/{key}"] = value
        text = tok.decode(result["greedy_ids"], skip_special_tokens=False)
        meta["prompts"][case] = {"tokens": len(ids), "greedy_text": text,  # type: ignore[index]
                                 "min_margin": float(result["min_margin"])}  # fmt: skip
        print(f"{case}: {len(ids)} prompt tokens, min top-2 margin {result['min_margin']:.4f}: {text!r}")
    np.savez_compressed(HERE / f"{name}.npz", **arrays)
    (HERE / f"{name}.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
