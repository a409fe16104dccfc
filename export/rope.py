"""Rotary position tables for the rope variants Llama, Mistral and Qwen2 configs use.

Pure numpy, following the formulas of each variant: the tables are baked into every block,
so the runtime never needs to know which variant a model uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.errors import ExportError

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str
    params: dict[str, Any]  # the scaling parameters of the variant, as config.json gives them
    max_position_embeddings: int


def parse_rope(config: dict[str, Any]) -> RopeConfig:
    """Read rope settings in both spellings: transformers 4 (`rope_theta` + `rope_scaling`) and
    transformers 5 (`rope_parameters` holding `rope_theta` and the type)."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # Phi-3's first name for longrope
        rope_type = "longrope"
    if rope_type == "longrope" and "original_max_position_embeddings" not in params:
        # Phi-3 keeps it beside the rope settings (transformers 4 configs)
        params["original_max_position_embeddings"] = config.get("original_max_position_embeddings")
    if config.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ExportError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ExportError(
            f"rope scaling type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    return RopeConfig(theta, rope_type, params, int(config.get("max_position_embeddings", 2048)))


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """(inv_freq of shape (head_dim/2,), attention factor that scales cos and sin)."""
    base = 1.0 / rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    p = rope.params
    if rope.rope_type in ("default", "dynamic"):
        # dynamic NTK only departs from default past max_position_embeddings, beyond our max context
        return base, 1.0
    if rope.rope_type == "linear":
        return base / float(p["factor"]), 1.0
    if rope.rope_type == "llama3":
        return _llama3(base, p), 1.0
    if rope.rope_type == "longrope":
        return _longrope(rope, head_dim, long=False)
    return _yarn(rope, head_dim)


def _longrope(rope: RopeConfig, head_dim: int, long: bool) -> tuple[np.ndarray, float]:
    """Phi-3's LongRoPE: each frequency divided by its own factor, the short list up to the original
    context and the long one past it, cos and sin scaled by sqrt(1 + ln(factor) / ln(original))."""
    p = rope.params
    original = int(p["original_max_position_embeddings"])
    factor = float(p.get("factor") or rope.max_position_embeddings / original)
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    factors = np.asarray(p["long_factor" if long else "short_factor"], np.float32)
    if factors.shape != (head_dim // 2,):
        raise ExportError(f"rope {'long' if long else 'short'}_factor has {factors.size} values, "
                          f"head_dim {head_dim} needs {head_dim // 2}")  # fmt: skip
    # as transformers computes it, in float32: 1 / (factor * base ** (2i / dim))
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    powers = np.power(np.float32(rope.theta), exponents, dtype=np.float32)
    return (np.float32(1.0) / (factors * powers)).astype(np.float64), float(attention)


def _llama3(inv_freq: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_context = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(medium, smoothed, scaled)


def _yarn(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    p = rope.params
    factor = float(p["factor"])
    original = p.get("original_max_position_embeddings")
    if original:
        # as transformers does: a config that raised max_position_embeddings scales by the ratio
        factor = rope.max_position_embeddings / float(original)
    else:
        original = rope.max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    inv_freq = (1 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1 / pos_freqs) * extrapolation_weight
    return inv_freq, float(attention)


def cos_sin_tables(rope: RopeConfig, head_dim: int, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin caches of shape (max_context, head_dim/2), float32, attention factor applied."""
    inv_freq, attention = inverse_frequencies(rope, head_dim)
    # transformers computes the angles in float32; doing the same keeps parity at long positions
    angles = np.arange(max_context, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    if rope.rope_type == "longrope":
        # transformers switches to the long factors once a forward pass reaches past the original
        # context; per position here, which is what one-token decode steps see there too
        original = int(rope.params["original_max_position_embeddings"])
        long_freq, _ = _longrope(rope, head_dim, long=True)
        positions = np.arange(original, max(original, max_context), dtype=np.float32)[:, None]
        angles[original:] = positions * long_freq.astype(np.float32)[None, :]
    # cos and sin as transformers rounds them: of float32 angles, then times the factor in float32
    cos = np.cos(angles).astype(np.float32) * np.float32(attention)
    sin = np.sin(angles).astype(np.float32) * np.float32(attention)
    return cos.astype(np.float32), sin.astype(np.float32)
