import numpy as np
import pytest

from node.step_input import sampling_of as sampling_from_wire
from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest
from swarm.remote import _sampling_message as sampling_to_wire
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


@pytest.mark.parametrize("params", [SamplingParams(0.7, 40, 0.9, 2**64 - 1), SamplingParams(1 / 3, 0, 0.95, 0),
                                    SamplingParams(0.0), SamplingParams(1e-300, 1, 1e-300, 1)])  # fmt: skip
def test_sampling_parameters_cross_the_wire_exactly(params: SamplingParams) -> None:
    wire = pb.Sampling.FromString(sampling_to_wire(params).SerializeToString())
    assert sampling_from_wire(wire) == params  # float32 on the wire made 0.7 arrive as 0.699999988


def test_a_tiny_temperature_samples_the_most_likely_token() -> None:
    logits = np.array([1.0, 3.0, 2.9, -50.0])
    tiny = SamplingParams(temperature=5e-324, seed=5)  # the smallest double: logits / T overflow
    assert np.array_equal(probabilities(logits, tiny), [0.0, 1.0, 0.0, 0.0])
    assert {sample(logits, tiny, p) for p in range(20)} == {1}
