"""GGUF files of the Qwen3 and Gemma 2 goldens, written as llama.cpp's converter writes them (q/k
norm tensors, Gemma's norms stored as 1 + w under its own names, soft-caps and window in the
metadata), export to the model the checkpoint folder exports to. (Gemma 3's mapping is checked on
the real Gemma 3 270M file, tests/integration/test_gemma3_gguf.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from export.exporter import ExportOptions, export_checkpoint
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
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, c["vocab_size"])]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, value in sorted(load_file(src / "model.safetensors").items()):
        value = value.astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            value = value + np.float32(1.0)  # llama.cpp's converter: its RMSNorm multiplies by the weight
        w.add_tensor(_name(name, gemma), value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


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
