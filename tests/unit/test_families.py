"""Each family's config.json read as transformers 5 reads it: which layers slide, which rotary
tables, and a field the exporter cannot honour named in the error (issue 20, item 3)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from export.errors import ExportError
from export.families import read_spec
from export.rope import cos_sin_tables
from tests.conftest import GOLDEN


def config(name: str, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((GOLDEN / name / "config.json").read_text())
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


@pytest.mark.parametrize(
    ("name", "changes", "named"),
    [
        ("llama_gqa_untied", {"attn_logit_softcapping": 30.0}, "attn_logit_softcapping=30.0"),
        ("qwen2", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config="),
        ("mistral", {"mlp_bias": True}, "mlp_bias=True"),
        ("qwen2", {"attention_bias": True}, "attention_bias=True"),  # Qwen2's biases are fixed: q, k, v only
        ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
        ("llama_gqa_untied", {"use_qk_norm": True}, "use_qk_norm=True"),
        ("llama_gqa_untied", {"hidden_act": "relu"}, "hidden_act 'relu'"),
        ("gemma2", {"hidden_activation": "relu"}, "hidden_activation 'relu'"),
        ("qwen3", {"layer_types": ["full_attention", "chunked_attention"]}, "'chunked_attention'"),
        ("llama_gqa_untied", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ("phi3", {"rope_parameters": {"rope_type": "mrope", "rope_theta": 1e4}}, "'mrope'"),
        ("llama_gqa_untied", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ],
)
def test_a_field_that_cannot_be_honoured_is_named(name: str, changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ExportError) as err:
        read_spec(config(name, **changes))
    assert named in str(err.value)


def test_an_unknown_architecture_lists_what_is_supported() -> None:
    with pytest.raises(ExportError) as err:
        read_spec(config("llama_gqa_untied", architectures=["GPT2LMHeadModel"], model_type="gpt2"))
    assert "unsupported architecture GPT2LMHeadModel" in str(err.value)
    assert "Gemma3ForCausalLM" in str(err.value) and "Qwen3MoeForCausalLM" in str(err.value)


def test_a_multimodal_gemma3_config_points_at_its_text_model() -> None:
    with pytest.raises(ExportError, match="Gemma3ForCausalLM"):
        read_spec(config("gemma3", architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3"))


def _layers(**fields: Any) -> dict[str, Any]:
    return {"num_hidden_layers": 6, "layer_types": ..., **fields}


@pytest.mark.parametrize(
    ("name", "changes", "windows"),
    [
        # Qwen2/Qwen3: from max_window_layers on, only with use_sliding_window
        ("qwen2", _layers(use_sliding_window=True, sliding_window=7, max_window_layers=4), [None] * 4 + [7, 7]),
        ("qwen2", _layers(use_sliding_window=False, sliding_window=32768, max_window_layers=0), [None] * 6),
        ("qwen3", _layers(use_sliding_window=True, sliding_window=3, max_window_layers=5), [None] * 5 + [3]),
        # Qwen2-MoE: every other layer from the first, below max_window_layers
        ("qwen2_moe", _layers(use_sliding_window=True, sliding_window=9, max_window_layers=4),
         [9, None, 9, None, None, None]),
        ("qwen3_moe", _layers(use_sliding_window=True, sliding_window=9), [9] * 6),
        ("mistral_sliding", _layers(), [5] * 6),
        ("mistral", _layers(), [None] * 6),
        # Gemma 2 alternates from a sliding first layer; Gemma 3 makes every sixth layer global
        ("gemma2", _layers(sliding_window=4), [4, None, 4, None, 4, None]),
        ("gemma3", _layers(sliding_window=4), [4, 4, 4, 4, 4, None]),
        ("gemma3", _layers(sliding_window=4, sliding_window_pattern=3), [4, 4, None, 4, 4, None]),
        ("gemma3", {"layer_types": ["full_attention", "full_attention", "sliding_attention"]}, [None, None, 5]),
    ],
)  # fmt: skip
def test_which_layers_slide(name: str, changes: dict[str, Any], windows: list[int | None]) -> None:
    spec = read_spec(config(name, **changes))
    assert [spec.window(i) for i in range(spec.num_layers)] == windows
    assert spec.sliding_window == max((w for w in windows if w), default=None)


def test_gemma3_local_layers_have_their_own_rope_base_in_both_spellings() -> None:
    new = read_spec(config("gemma3"))
    assert (new.rope.theta, new.rope.rope_type, new.local_rope and new.local_rope.theta) == (1e6, "linear", 1e4)
    assert [new.rope_of(i).theta for i in range(3)] == [1e4, 1e6, 1e4]
    old = config("gemma3", rope_parameters=..., rope_theta=1e6, rope_local_base_freq=1e4,
                 rope_scaling={"rope_type": "linear", "factor": 2.0})  # fmt: skip
    spec = read_spec(old)
    for layer in range(3):
        np.testing.assert_array_equal(cos_sin_tables(spec.rope_of(layer), 16, 64),
                                      cos_sin_tables(new.rope_of(layer), 16, 64))  # fmt: skip


def test_gemma_scales_and_caps() -> None:
    spec = read_spec(config("gemma2"))
    assert spec.attention_scale == pytest.approx(24**-0.5)
    assert (spec.attn_softcap, spec.final_softcap) == (4.0, 10.0)
    assert spec.family.norm_offset and spec.family.sandwich_norms and spec.family.embed_scale
    assert spec.family.activation == "gelu_tanh" and not spec.family.qk_norm


def test_phi3_su_is_longrope_with_its_original_context_beside_it() -> None:
    """Phi-3's transformers 4 spelling: rope_scaling type "su", original_max_position_embeddings top level."""
    new = config("phi3_longrope")["rope_parameters"]
    scaling = {"type": "su", "short_factor": new["short_factor"], "long_factor": new["long_factor"]}
    old = config("phi3_longrope", rope_parameters=..., rope_scaling=scaling, rope_theta=10000.0,
                 original_max_position_embeddings=16)  # fmt: skip
    spec = read_spec(old)
    assert spec.rope.rope_type == "longrope" and spec.rope.params["original_max_position_embeddings"] == 16
    assert spec.rope.theta == read_spec(config("phi3_longrope")).rope.theta == 10000.0


def test_moe_routing_read_from_each_family() -> None:
    mixtral = read_spec(config("mixtral")).moe
    assert mixtral is not None and (mixtral.num_experts, mixtral.top_k, mixtral.normalize) == (4, 2, True)
    qwen2 = read_spec(config("qwen2_moe")).moe
    assert qwen2 is not None and (qwen2.normalize, qwen2.shared_size, qwen2.dense_layers) == (False, 40, (1,))
    stepped = read_spec(config("qwen2_moe", decoder_sparse_step=2, mlp_only_layers=[]))
    assert stepped.moe is not None and stepped.moe.dense_layers == (0,)  # layer i is sparse when (i + 1) % 2 == 0
