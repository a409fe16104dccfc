import numpy as np
import pytest

from swarm.errors import InvalidRequest
from swarm.sampling import SamplingParams, probabilities, sample, uniform

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1]))


def test_greedy_is_argmax() -> None:
    assert sample(np.array([0.1, 3.0, 2.9]), SamplingParams(), position=7) == 1


def test_draw_depends_only_on_seed_and_position() -> None:
    assert uniform(42, 10) == uniform(42, 10)
    assert uniform(42, 10) != uniform(42, 11)
    assert uniform(42, 10) != uniform(43, 10)


def test_temperature_one_keeps_distribution() -> None:
    np.testing.assert_allclose(probabilities(LOGITS, SamplingParams(temperature=1.0)), [0.5, 0.25, 0.15, 0.1])


def test_top_k_keeps_k_tokens() -> None:
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(probs, [2 / 3, 1 / 3, 0, 0])


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    np.testing.assert_allclose(probs, [2 / 3, 1 / 3, 0, 0])
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.75))
    np.testing.assert_allclose(probs, [2 / 3, 1 / 3, 0, 0])
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.76))
    np.testing.assert_allclose(probs, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])


def test_sampling_follows_distribution() -> None:
    params = SamplingParams(temperature=1.0, seed=5)
    counts = np.bincount([sample(LOGITS, params, p) for p in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.15, 0.1], atol=0.03)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
     {"seed": -1}],
)  # fmt: skip
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest):
        SamplingParams(**kwargs)  # type: ignore[arg-type]
