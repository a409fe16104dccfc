"""`swarm-export FILE.gguf`: GGUF files written here from the tiny golden checkpoints.

The files are made the way llama.cpp's converter makes them (q/k rows permuted for its rope,
tensors named and shaped as ggml stores them, block-quantized by the `gguf` package), so the
export is checked against the same weights read from the checkpoint folder, which the golden
tests tie to transformers. Bad files get one clear line and a non-zero exit.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file

from export.checkpoint import open_checkpoint
from export.exporter import ExportOptions, export_checkpoint
from swarm.local import LocalModel
from swarm.package import ModelPackage
from tests.conftest import ExportFn, golden_checkpoint
from tests.integration.test_export_cli import assert_clean_failure, run_export

CASE = "llama_gqa_untied"  # GQA (4 heads, 2 kv heads) and an untied head
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _gguf_name(hf: str) -> str:
    stem, kind = hf.rsplit(".", 1)
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    _, _, layer, part = stem.split(".", 3)
    return f"blk.{layer}.{_LAYER[part]}.{kind}"


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (its rope pairs neighbours)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokens(vocab: int) -> list[str]:
    """A byte-level vocabulary: special tokens, 256 byte symbols, one merge ("!!") and fillers."""
    symbols = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(256, 256 + 162)]
    special = ["<unk>", "<s>", "</s>"]
    return special + symbols + ["!!"] + [f"<extra_{i}>" for i in range(vocab - 4 - len(symbols))]


def write_gguf(path: Path, qtype: Q = Q.F32, arch: str = "llama", tokenizer: bool = True) -> Path:
    """The golden checkpoint CASE as llama.cpp would convert it, its linear weights in `qtype`
    where their rows are whole blocks (others stay F32, as llama.cpp falls back too)."""
    src = golden_checkpoint(CASE)
    c = open_checkpoint(src).config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    writer.add_rope_dimension_count(c["head_dim"])
    if tokenizer:
        tokens = _tokens(c["vocab_size"])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        writer.add_token_merges(["! !"])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    for name, value in sorted(load_file(src / "model.safetensors").items()):
        w = value.astype(np.float32)
        if name.endswith("q_proj.weight"):
            w = _llama_cpp_permute(w, c["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = _llama_cpp_permute(w, c["num_key_value_heads"])
        if qtype != Q.F32 and w.ndim == 2 and w.shape[1] % block == 0 and "proj" in name:
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(_gguf_name(name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(package: ModelPackage, ids: list[int]) -> np.ndarray:
    model = LocalModel(package)
    try:
        return model.session(len(ids) + 1).logits(ids)
    finally:
        model.close()


IDS = [1, 17, 200, 5, 93, 41, 300, 8, 77, 12]


def test_a_float_gguf_exports_the_checkpoints_model(tmp_path: Path, export_package: ExportFn) -> None:
    """Names, shapes, the q/k row permutation and the config all come back as the folder has them."""
    package = export_checkpoint(write_gguf(tmp_path / "tiny.gguf"), tmp_path / "pkg", ExportOptions())
    assert package.manifest.dtype == "float32" and package.manifest.quantization is None
    reference = _logits(export_package(golden_checkpoint(CASE)), IDS)
    np.testing.assert_allclose(_logits(package, IDS), reference, atol=1e-5)
    arch = package.manifest.architecture
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.tie_word_embeddings) == (4, 2, 16, False)


@pytest.mark.parametrize("qtype, bits", [(Q.Q8_0, 8), (Q.Q4_0, 4), (Q.Q4_1, 4), (Q.Q5_0, 8), (Q.Q5_1, 8)])
def test_quantized_blocks_are_kept_exactly(tmp_path: Path, qtype: Q, bits: int) -> None:
    """By default the file's blocks become MatMulNBits weights (with block mins beside them where
    the format has mins) that compute what the dequantized weights compute."""
    path = write_gguf(tmp_path / "tiny.gguf", qtype)
    native = export_checkpoint(path, tmp_path / "native", ExportOptions(accuracy_level=0))
    dequantized = export_checkpoint(path, tmp_path / "float", ExportOptions(dtype="float32"))
    assert native.manifest.quantization == f"int{bits}" and dequantized.manifest.quantization is None
    assert sum(b.bytes for b in native.manifest.blocks) < sum(b.bytes for b in dequantized.manifest.blocks) / 1.5
    np.testing.assert_allclose(_logits(native, IDS), _logits(dequantized, IDS), atol=2e-5)


def test_quantize_still_overrides_a_ggufs_formats(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", Q.Q8_0)
    package = export_checkpoint(path, tmp_path / "int4", ExportOptions(quantize="int4"))
    assert package.manifest.quantization == "int4"


def test_a_truncated_gguf_is_one_line(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "tiny.gguf").read_bytes()
    for cut in (len(whole) // 2, 200):  # inside the tensor data, inside the metadata
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        assert_clean_failure(run_export(tmp_path / "cut.gguf", tmp_path / "out"), "truncated")
    assert not (tmp_path / "out").exists()


def test_an_unknown_tensor_type_is_one_line(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    data = bytearray(path.read_bytes())
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)  # the tensor's info record
    (dims,) = struct.unpack_from("<I", data, at)
    struct.pack_into("<I", data, at + 4 + 8 * dims, 250)  # its ggml type
    path.write_bytes(bytes(data))
    assert_clean_failure(run_export(path, tmp_path / "out"), "tensor of type 250")


def test_an_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", arch="mamba")
    assert_clean_failure(run_export(path, tmp_path / "out"), "GGUF architecture 'mamba' is not supported")


def test_a_gguf_without_tokenizer_metadata_is_one_line(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", tokenizer=False)
    assert_clean_failure(run_export(path, tmp_path / "out"), "tokenizer")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_not_a_gguf(tmp_path: Path) -> None:
    shutil.copyfile(golden_checkpoint(CASE) / "config.json", tmp_path / "x.gguf")
    assert_clean_failure(run_export(tmp_path / "x.gguf", tmp_path / "out"), "is not a GGUF file")
