"""Regenerate the tiny-random Hugging Face checkpoints and golden outputs under tests/golden/.

Needs torch + transformers (``pip install -e '.[golden]'``); the tests that read these files do not.
Deterministic and idempotent: every case folder is wiped and rewritten on each run.

    python tests/golden/make_goldens.py            # all cases
    python tests/golden/make_goldens.py qwen2      # just the named ones
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    GenerationMixin,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.utils import logging as hf_logging
from weights import WEIGHT_STD, WEIGHTS_FILE, digest, draw

GOLDEN_DIR = Path(__file__).resolve().parent

# Shared tiny dimensions. Two layers and intermediate 80 keep the untied checkpoint under 400 KB
# (float32: 320x64 embeddings + lm_head alone are 164 KB); 80 != hidden so transposed MLP weights show.
VOCAB = 320
HIDDEN = 64
INTERMEDIATE = 80
LAYERS = 2
HEADS = 4
MAX_POS = 128

PROMPT_LEN = 12
DECODE_STEPS = 8
FIRST_ID = 3  # ids 0..2 are <unk>, <s>, </s>

CONSISTENCY_TOL = 1e-4
MIN_GREEDY_MARGIN = 0.02  # ~1000x float32 noise; pick another seed if a case falls below

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<s> {{ message['role'] }} {{ message['content'] }} </s> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)

COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "max_position_embeddings": MAX_POS,
    "rms_norm_eps": 1e-6,
    "initializer_range": WEIGHT_STD,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class Case:
    name: str
    model_cls: type[PreTrainedModel]
    config_cls: type[PretrainedConfig]
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    # the families added with issue 20 (and every later case): 24 greedy tokens, and weights drawn
    # for the tensor names of the saved file (transformers 5 keeps experts fused in memory but
    # writes them one by one, as checkpoints on the Hub have them) and loaded back from it
    greedy_tokens: int = 16
    from_file: bool = False
    # LongRoPE past its original context: a forward pass picks one factor set for every position it
    # holds, so transformers' cached decode differs from its own full recompute there, and Phi-3's
    # generate() re-encodes the whole sequence without its cache at the crossing. Such a case checks
    # neither, and takes its greedy tokens from the cached forward, one step at a time (greedy_steps).
    longrope_crossing: bool = False


def rope(theta: float, **scaling: Any) -> dict[str, Any]:
    """transformers 5.x keeps rope_theta and any scaling together in `rope_parameters`."""
    rope_type = scaling.pop("rope_type", "default")
    return {"rope_parameters": {"rope_type": rope_type, "rope_theta": theta, **scaling}}


LLAMA_BASE: dict[str, Any] = {"num_key_value_heads": 2, "tie_word_embeddings": False}

# Seeds are arbitrary but fixed; a few were bumped until the greedy margin cleared MIN_GREEDY_MARGIN.
CASES: list[Case] = [
    Case("llama_gqa_untied", LlamaForCausalLM, LlamaConfig, 1025, {**LLAMA_BASE, **rope(10000.0)}),
    Case(
        "llama_rope_llama3",
        LlamaForCausalLM,
        LlamaConfig,
        1102,
        {
            **LLAMA_BASE,
            "tie_word_embeddings": True,
            **rope(
                500000.0,
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                # 64, not 32: with head_dim 16 and theta 5e5 one frequency then falls in the smoothed band
                original_max_position_embeddings=64,
            ),
        },
    ),
    Case(
        "llama_rope_linear",
        LlamaForCausalLM,
        LlamaConfig,
        1003,
        {**LLAMA_BASE, **rope(10000.0, rope_type="linear", factor=2.0)},
    ),
    Case(
        "mistral",
        MistralForCausalLM,
        MistralConfig,
        1104,
        {"num_key_value_heads": 1, "head_dim": 16, "sliding_window": None, **rope(10000.0)},
    ),
    Case(
        "mistral_sliding",
        MistralForCausalLM,
        MistralConfig,
        1117,
        {"num_key_value_heads": 2, "sliding_window": 5, **rope(10000.0)},
    ),
    Case(
        "qwen2",
        Qwen2ForCausalLM,
        Qwen2Config,
        1306,
        {"num_key_value_heads": 2, "tie_word_embeddings": True, **rope(1000000.0)},
        chat_template=CHAT_TEMPLATE,
    ),
    Case(
        "qwen2_rope_yarn",
        Qwen2ForCausalLM,
        Qwen2Config,
        1119,
        {
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            # theta 1e4, not Qwen2's 1e6: with head_dim 16 only then does the yarn ramp take a value
            # strictly between 0 and 1 (the blend branch); at 1e6 it would be a plain 0/1 step
            **rope(10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=32),
        },
    ),
]


def new_case(name: str, model_cls: type[PreTrainedModel], config_cls: type[PretrainedConfig], seed: int,
             **config: Any) -> Case:  # fmt: skip
    return Case(name, model_cls, config_cls, seed, config, greedy_tokens=24, from_file=True)


def _longrope_factors(n: int, low: float, high: float) -> list[float]:
    return [round(low + (high - low) * i / (n - 1), 4) for i in range(n)]


GEMMA_BASE: dict[str, Any] = {"head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "pad_token_id": 0}
MOE_BASE: dict[str, Any] = {"num_key_value_heads": 2, "num_experts_per_tok": 2}

# issue 20: every family and variant, every parameter random (biases and norms included)
CASES += [
    new_case("llama_bias", LlamaForCausalLM, LlamaConfig, 2001, **LLAMA_BASE, attention_bias=True, mlp_bias=True,
             **rope(10000.0)),
    # layer 0 full, layer 1 sliding: the window applies per layer, from max_window_layers on
    new_case("qwen2_sliding", Qwen2ForCausalLM, Qwen2Config, 2302, num_key_value_heads=2, tie_word_embeddings=True,
             use_sliding_window=True, sliding_window=5, max_window_layers=1, **rope(1000000.0)),
    new_case("qwen3", Qwen3ForCausalLM, Qwen3Config, 2103, num_key_value_heads=2, head_dim=16,
             tie_word_embeddings=False, **rope(1000000.0)),
    new_case("qwen3_tied_bias_sliding", Qwen3ForCausalLM, Qwen3Config, 2404, num_key_value_heads=1, head_dim=16,
             tie_word_embeddings=True, attention_bias=True, use_sliding_window=True, sliding_window=4,
             max_window_layers=1, **rope(10000.0)),
    # caps small enough to bite: random attention scores reach ~10, the top logits ~10
    new_case("gemma2", Gemma2ForCausalLM, Gemma2Config, 2205, **GEMMA_BASE, num_key_value_heads=2,
             query_pre_attn_scalar=24, attn_logit_softcapping=4.0, final_logit_softcapping=10.0, sliding_window=5,
             **rope(10000.0)),
    # three layers: local, global, local; the global one with linear scaling, the local ones their own base
    new_case("gemma3", Gemma3ForCausalLM, Gemma3TextConfig, 2106, **GEMMA_BASE, num_key_value_heads=1,
             num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
             query_pre_attn_scalar=16, sliding_window=5,
             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    new_case("phi3", Phi3ForCausalLM, Phi3Config, 2407, num_key_value_heads=2, pad_token_id=0, **rope(10000.0)),
    # LongRoPE with an original context of 16: positions from 16 on take the long factors
    Case("phi3_longrope", Phi3ForCausalLM, Phi3Config, 2308,
         {"num_key_value_heads": 4, "pad_token_id": 0, "original_max_position_embeddings": 16,
          "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
                              "short_factor": _longrope_factors(8, 1.0, 1.6),
                              "long_factor": _longrope_factors(8, 1.2, 6.0)}},
         greedy_tokens=24, from_file=True, longrope_crossing=True),
    new_case("mixtral", MixtralForCausalLM, MixtralConfig, 2009, **MOE_BASE, num_local_experts=4, **rope(10000.0)),
    # layer 1 is a plain MLP (mlp_only_layers); routing weights not renormalised; a gated shared expert
    new_case("qwen2_moe", Qwen2MoeForCausalLM, Qwen2MoeConfig, 2010, **MOE_BASE, num_experts=4,
             moe_intermediate_size=24, shared_expert_intermediate_size=40, mlp_only_layers=[1],
             norm_topk_prob=False, tie_word_embeddings=False, **rope(1000000.0)),
    new_case("qwen3_moe", Qwen3MoeForCausalLM, Qwen3MoeConfig, 2011, **MOE_BASE, num_experts=4, head_dim=16,
             moe_intermediate_size=24, norm_topk_prob=True, tie_word_embeddings=False, **rope(1000000.0)),
]  # fmt: skip


def build_model(case: Case) -> PreTrainedModel:
    config = case.config_cls(**{**COMMON, **case.config})
    config.architectures = [case.model_cls.__name__]
    model = case.model_cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    if case.from_file:
        return load_random_from_file(case, model)
    model.weights_spec = randomize_weights(model, case.seed)  # type: ignore[attr-defined]
    return model.eval()


@torch.no_grad()
def load_random_from_file(case: Case, model: PreTrainedModel) -> PreTrainedModel:
    """Save the model, redraw every tensor of the saved file (weights.draw, in the file's name order),
    and load the model back from that file: the goldens come from exactly what the tests redraw."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        with safe_open(f"{tmp}/model.safetensors", "np") as f:
            tensors = [(name, list(f.get_slice(name).get_shape())) for name in sorted(f.keys())]
        drawn = draw(case.seed, tensors)
        save_file({n: torch.from_numpy(a) for n, a in drawn.items()}, f"{tmp}/model.safetensors",
                  metadata={"format": "pt"})  # fmt: skip
        loaded, info = case.model_cls.from_pretrained(
            tmp, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"{case.name}: the drawn file does not load cleanly: {problems}")
    loaded.weights_spec = {"seed": case.seed, "sha256": digest(drawn), "tensors": tensors}
    return loaded.eval()


@torch.no_grad()
def randomize_weights(model: PreTrainedModel, seed: int) -> dict[str, Any]:
    """Overwrite every parameter with weights.draw (so the tests can redraw them without torch);
    the weights.json that describes them."""
    tensors = [(name, list(param.shape)) for name, param in model.named_parameters()]  # tied: embed_tokens only
    drawn = draw(seed, tensors)
    for name, param in model.named_parameters():
        param.copy_(torch.from_numpy(drawn[name]))
    return {"seed": seed, "sha256": digest(drawn), "tensors": tensors}


def random_ids(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(FIRST_ID, VOCAB, (n,), generator=gen, dtype=torch.int64)


@torch.no_grad()
def prefill_and_decode(
    model: PreTrainedModel, input_ids: torch.Tensor, decode_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill logits (1, T, V), then one cached forward per decode id -> (steps, V)."""
    out = model(input_ids=input_ids, use_cache=True)
    prefill_logits, past = out.logits, out.past_key_values
    steps = []
    for token in decode_ids.tolist():
        out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits[0, -1])
    return prefill_logits, torch.stack(steps)


@torch.no_grad()
def greedy(model: PreTrainedModel, input_ids: torch.Tensor, tokens: int) -> tuple[torch.Tensor, float]:
    """`generate` with eos disabled, so it always makes exactly `tokens` tokens.

    Also returns the smallest top-1 minus top-2 logit gap along the way: a golden whose argmax is a
    near-tie would flip on harmless float noise in the exporter under test.
    """
    gen_config = GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        bos_token_id=1,
        return_dict_in_generate=True,
        output_logits=True,
    )
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"{type(model).__name__} cannot generate")
    out = model.generate(input_ids, generation_config=gen_config)  # type: ignore[misc]  # transformers stub
    if not isinstance(out, GenerateDecoderOnlyOutput) or out.logits is None:
        raise TypeError(f"unexpected generate output {type(out).__name__}")
    new = out.sequences[0, input_ids.shape[1] :]
    if new.shape[0] != tokens:
        raise RuntimeError(f"generate made {new.shape[0]} tokens, wanted {tokens}")
    top2 = torch.cat(out.logits).topk(2, dim=-1).values
    return new, (top2[:, 0] - top2[:, 1]).min().item()


@torch.no_grad()
def greedy_steps(model: PreTrainedModel, input_ids: torch.Tensor, tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy tokens from the cached forward, one step at a time, and the smallest top-2 margin."""
    out = model(input_ids=input_ids, use_cache=True)
    past, logits, new = out.past_key_values, [out.logits[0, -1]], []
    for _ in range(tokens):
        new.append(int(logits[-1].argmax()))
        if len(new) < tokens:
            out = model(input_ids=torch.tensor([[new[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[0, -1])
    top2 = torch.stack(logits).topk(2, dim=-1).values
    return torch.tensor(new), (top2[:, 0] - top2[:, 1]).min().item()


@torch.no_grad()
def check_consistency(
    model: PreTrainedModel, input_ids: torch.Tensor, decode_ids: torch.Tensor, decode_logits: torch.Tensor
) -> float:
    """Cached decode must match a no-cache forward over prompt + decode ids."""
    full = torch.cat([input_ids[0], decode_ids])[None]
    ref = model(input_ids=full, use_cache=False).logits[0, -DECODE_STEPS:]
    diff = (ref - decode_logits).abs().max().item()
    if diff > CONSISTENCY_TOL:
        raise RuntimeError(f"cached decode differs from full recompute by {diff}")
    return diff


def build_tokenizer() -> Tokenizer:
    vocab = {UNK: 0, BOS: 1, EOS: 2} | {f"t{i}": i for i in range(FIRST_ID, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS)])
    return tok


def tokenizer_config(chat_template: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": False,
        "model_max_length": MAX_POS,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    return cfg


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def goldens(model: PreTrainedModel, case: Case) -> tuple[dict[str, np.ndarray], float, float]:
    """The golden arrays, the cached-vs-recompute decode diff and the smallest greedy margin."""
    gen = torch.Generator().manual_seed(case.seed + 500_000)
    input_ids = random_ids(gen, PROMPT_LEN)[None]
    decode_ids = random_ids(gen, DECODE_STEPS)
    prefill_logits, decode_logits = prefill_and_decode(model, input_ids, decode_ids)
    if case.longrope_crossing:
        diff = float("nan")
        greedy_ids, margin = greedy_steps(model, input_ids, case.greedy_tokens)
    else:
        diff = check_consistency(model, input_ids, decode_ids, decode_logits)
        greedy_ids, margin = greedy(model, input_ids, case.greedy_tokens)
    arrays: dict[str, np.ndarray] = {
        "input_ids": input_ids.numpy().astype(np.int64),
        "prefill_logits": prefill_logits.numpy().astype(np.float32),
        "decode_ids": decode_ids.numpy().astype(np.int64),
        "decode_logits": decode_logits.numpy().astype(np.float32),
        "greedy_ids": greedy_ids.numpy().astype(np.int64),
    }
    return arrays, diff, margin


def check_greedy(case: Case, greedy_ids: np.ndarray, margin: float) -> None:
    if margin < MIN_GREEDY_MARGIN:
        raise RuntimeError(f"{case.name}: greedy top-2 margin {margin:.4f} too small, change its seed")
    if len(set(greedy_ids.tolist())) < 3:
        raise RuntimeError(f"{case.name}: greedy output too repetitive: {greedy_ids.tolist()}")


def write_case(case: Case, log: Callable[[str], None] = print) -> None:
    """Compute everything first, so a failing check leaves the old folder in place."""
    torch.manual_seed(case.seed)
    model = build_model(case)
    arrays, diff, margin = goldens(model, case)
    check_greedy(case, arrays["greedy_ids"], margin)

    out = GOLDEN_DIR / case.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "model.safetensors").unlink()  # the tests redraw it from weights.json (tests/golden/weights.py)
    (out / WEIGHTS_FILE).write_text(json.dumps(model.weights_spec) + "\n")
    build_tokenizer().save(str(out / "tokenizer.json"))
    tok_config = json.dumps(tokenizer_config(case.chat_template), indent=2)
    (out / "tokenizer_config.json").write_text(tok_config + "\n")
    write_npz(out / "golden.npz", arrays)
    for path in out.iterdir():
        path.chmod(0o644)  # save_pretrained writes model.safetensors as 0600
    log(f"{case.name}: greedy {arrays['greedy_ids'].tolist()} margin {margin:.3f} decode diff {diff:.1e}")


def main(argv: list[str] | None = None) -> None:
    wanted = set(sys.argv[1:] if argv is None else argv)
    unknown = wanted - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s): {sorted(unknown)}")
    if int(transformers.__version__.split(".")[0]) < 5:
        # 4.x would silently ignore the `rope_parameters` kwarg and write goldens without RoPE scaling
        raise SystemExit(f"needs transformers >= 5, found {transformers.__version__}")
    hf_logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for case in CASES:
        if not wanted or case.name in wanted:
            write_case(case)


if __name__ == "__main__":
    main()
