"""GGUF files of the Qwen3 and Gemma 2 goldens, written as llama.cpp's converter writes them (q/k
norm tensors, Gemma's norms stored as 1 + w under its own names, soft-caps and window in the
metadata), export to the model the checkpoint folder exports to. (Gemma 3's mapping is checked on
the real Gemma 3 270M file, tests/integration/test_gemma3_gguf.py.)"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from export.errors import ExportError
from export.exporter import ExportOptions, export_checkpoint
from export.gguf_arch import hf_config
from swarm.local import LocalModel
from tests.conftest import ExportFn, golden_checkpoint
from tests.helpers import close_after_test

_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm"}  # fmt: skip
_PLAIN = {"post_attention_layernorm": "ffn_norm"}
_GEMMA = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}  # fmt: skip
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _name(hf: str, gemma: bool) -> str:
    stem, kind = hf.rsplit(".", 1)
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    _, _, layer, part = stem.split(".", 3)
    return f"blk.{layer}.{({**_LAYER, **(_GEMMA if gemma else _PLAIN)})[part]}.{kind}"


def _add_placeholder_tokenizer(w: gguf.GGUFWriter, vocab: int) -> None:
    """A SentencePiece vocabulary of placeholders: what the export needs; the tests feed token ids."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _written(w: gguf.GGUFWriter, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_gguf(case: str, arch: str, path: Path) -> Path:
    src = golden_checkpoint(case)
    c = json.loads((src / "config.json").read_text())
    gemma = arch.startswith("gemma")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    if c.get("sliding_window"):
        w.add_sliding_window(c["sliding_window"])
    if c.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
    if c.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(c["final_logit_softcapping"])
    _add_placeholder_tokenizer(w, c["vocab_size"])
    for name, value in sorted(load_file(src / "model.safetensors").items()):
        value = value.astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            value = value + np.float32(1.0)  # llama.cpp's converter: its RMSNorm multiplies by the weight
        w.add_tensor(_name(name, gemma), value)
    return _written(w, path)


@pytest.mark.parametrize(("case", "arch", "config"), [
    ("qwen3", "qwen3", {}),
    # llama.cpp scales Gemma 2's scores by 1/sqrt(head_dim), having no query_pre_attn_scalar to read
    ("gemma2", "gemma2", {"query_pre_attn_scalar": 16}),
])  # fmt: skip
def test_a_gguf_exports_the_folders_model(tmp_path: Path, export_package: ExportFn, case: str, arch: str,
                                          config: dict) -> None:  # type: ignore[type-arg]  # fmt: skip
    folder = Path(shutil.copytree(golden_checkpoint(case), tmp_path / case))
    changed = {**json.loads((folder / "config.json").read_text()), **config}
    (folder / "config.json").write_text(json.dumps(changed))
    package = export_checkpoint(write_gguf(case, arch, tmp_path / f"{case}.gguf"), tmp_path / "pkg", ExportOptions())
    arch_facts = package.manifest.architecture
    assert arch_facts.family == ("gemma2" if arch == "gemma2" else "qwen3")
    ids = np.load(folder / "golden.npz")["input_ids"][0].tolist()
    ours, reference = (
        close_after_test(LocalModel(p)).session(32).logits(ids) for p in (package, export_package(folder))
    )
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    if not config:  # the folder is the golden itself: transformers' logits too
        np.testing.assert_allclose(ours, np.load(folder / "golden.npz")["prefill_logits"][0], atol=1e-4)


# Phi-3 and the mixtures of experts, named by the gguf package's own map (ggml's names for each
# architecture), experts stacked into one tensor per projection as llama.cpp's converter stacks them
_EXPERT = re.compile(r"(model\.layers\.\d+\.(?:block_sparse_moe|mlp)\.experts)\.(\d+)\.(\w+)\.weight")


def _ggml_tensors(weights: dict[str, np.ndarray], arch: gguf.MODEL_ARCH, layers: int,
                  permute: tuple[int, int] | None) -> dict[str, np.ndarray]:  # fmt: skip
    names = gguf.get_tensor_name_map(arch, layers)
    stacks: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for name, value in sorted(weights.items()):
        if m := _EXPERT.fullmatch(name):
            stacks.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = value
            continue
        if permute and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            value = _llama_cpp_permute(value, permute[0] if "q_proj" in name else permute[1])
        stem, kind = name.rsplit(".", 1)
        # a dense layer among expert layers (Qwen2-MoE's mlp_only_layers) keeps the plain MLP names
        mapped = names.get_name(stem) or _DENSE.get(stem.rsplit(".", 1)[-1], "").format(layer=stem.split(".")[2])
        assert mapped, f"gguf has no name for {name}"
        out[f"{mapped}.{kind}"] = value
    for stem, experts in stacks.items():
        mapped = names.get_name(stem)
        assert mapped, f"gguf has no name for {stem}"
        out[f"{mapped}.weight"] = np.stack([experts[e] for e in sorted(experts)])
    return out


_DENSE = {"gate_proj": "blk.{layer}.ffn_gate", "up_proj": "blk.{layer}.ffn_up", "down_proj": "blk.{layer}.ffn_down"}


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order for the llama family (its rope pairs neighbours)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_family_gguf(case: str, arch: gguf.MODEL_ARCH, path: Path) -> Path:
    src = golden_checkpoint(case)
    c = json.loads((src / "config.json").read_text())
    rope = c.get("rope_parameters") or {}
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(head_dim)
    if c.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == gguf.MODEL_ARCH.PHI3:  # as the converter writes Phi-3: the window 0 = none
        original = c.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_sliding_window(c.get("sliding_window") or 0)
        if rope.get("rope_type") == "longrope":
            scale = c["max_position_embeddings"] / original
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
            w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32))
            w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32))
    if experts := c.get("num_local_experts") or c.get("num_experts"):
        w.add_expert_count(experts)
        w.add_expert_used_count(c["num_experts_per_tok"])
        if c.get("moe_intermediate_size"):
            w.add_expert_feed_forward_length(c["moe_intermediate_size"])
        if c.get("shared_expert_intermediate_size"):
            w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    _add_placeholder_tokenizer(w, c["vocab_size"])
    permute = (heads, kv_heads) if arch == gguf.MODEL_ARCH.LLAMA else None
    weights = {n: v.astype(np.float32) for n, v in load_file(src / "model.safetensors").items()}
    for name, value in _ggml_tensors(weights, arch, c["num_hidden_layers"], permute).items():
        w.add_tensor(name, value)
    return _written(w, path)


@pytest.mark.parametrize(("case", "arch", "family"), [
    ("phi3", gguf.MODEL_ARCH.PHI3, "phi3"),  # fused qkv and gate_up, kept fused
    ("phi3_longrope", gguf.MODEL_ARCH.PHI3, "phi3"),  # longrope factors as tensors, the attention factor
    ("mixtral", gguf.MODEL_ARCH.LLAMA, "mixtral"),  # a llama GGUF with experts, q/k permuted
    ("qwen2_moe", gguf.MODEL_ARCH.QWEN2MOE, "qwen2_moe"),  # shared expert and its gate; layer 1 dense
    ("qwen3_moe", gguf.MODEL_ARCH.QWEN3MOE, "qwen3_moe"),  # q/k norms, renormalised top-k
])  # fmt: skip
def test_phi3_and_moe_ggufs_export_transformers_model(tmp_path: Path, case: str, arch: gguf.MODEL_ARCH,
                                                      family: str) -> None:  # fmt: skip
    folder = golden_checkpoint(case)
    package = export_checkpoint(_write_family_gguf(case, arch, tmp_path / f"{case}.gguf"), tmp_path / "pkg",
                                ExportOptions())  # fmt: skip
    assert package.manifest.architecture.family == family
    golden = np.load(folder / "golden.npz")
    ids = golden["input_ids"][0].tolist()
    ours = close_after_test(LocalModel(package)).session(len(ids) + 1).logits(ids)
    np.testing.assert_allclose(ours, golden["prefill_logits"][0], atol=1e-4)


def test_a_moe_gguf_without_the_expert_count_is_one_line(tmp_path: Path) -> None:
    path = _write_family_gguf("qwen3_moe", gguf.MODEL_ARCH.QWEN3MOE, tmp_path / "moe.gguf")
    reader = gguf.GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields.pop("qwen3moe.expert_count") == 4
    with pytest.raises(ExportError, match="expert_count"):
        hf_config("qwen3moe", fields, {}, {})
