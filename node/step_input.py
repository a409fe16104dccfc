"""What a step brings into a node, checked (token ids in prefill chunks, or hidden states), and what
a private session's last node gives back; a session's sampling as its opening states it."""

from __future__ import annotations

import numpy as np

from node.sessions import NodeSession
from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest
from swarm.sampling import SamplingParams
from swarm.span import StepOutput, prefill_chunks
from swarm.tensors import from_wire


def token_chunks(session: NodeSession, step: pb.Step) -> list[list[int]]:
    """The first node's input: the step's token ids, in the session's prefill chunks."""
    if step.WhichOneof("input") != "tokens":
        raise InvalidRequest("the first node of a route takes token ids")
    ids = list(step.tokens.ids)
    room = session.max_length - session.length
    if not 1 <= len(ids) <= room:
        raise InvalidRequest(f"step has {len(ids)} tokens; the session has room for {room}")
    if step.drafts:  # a verify step is one pass (as the local runner's): never chunked
        if ids[len(ids) - len(step.drafts) :] != list(step.drafts):
            raise InvalidRequest("a verify step's drafts must be the last of its tokens")
        return [ids]
    return prefill_chunks(ids, session.prefill_chunk)


def hidden_input(session: NodeSession, step: pb.Step, hidden_size: int) -> np.ndarray:
    """The step's hidden states (1, S, H), checked against the span and the session."""
    if step.WhichOneof("input") != "hidden":
        raise InvalidRequest("this node takes hidden states, not token ids")
    hidden = from_wire(step.hidden, (1, None, hidden_size), (session.wire_dtype,))
    room = session.max_length - session.length
    if hidden.shape[1] > room or (step.partial and hidden.shape[1] == room):
        raise InvalidRequest(f"step has {hidden.shape[1]} positions; the session has room for {room}")
    return np.ascontiguousarray(hidden)


def returned(session: NodeSession, output: StepOutput) -> np.ndarray:
    """What the last node of a private session returns: the step's last position for the client's
    head, or every position (the earlier chunks' too) when the client runs the last layers."""
    assert output.hidden is not None
    if not session.return_all:
        return output.hidden[:, -1:]
    held, session.held = session.held, []
    return np.concatenate([*held, output.hidden], axis=1) if held else output.hidden


def sampling_of(msg: pb.Sampling) -> SamplingParams:
    return SamplingParams(
        temperature=float(msg.temperature),
        top_k=int(msg.top_k),
        top_p=float(msg.top_p or 1.0),
        seed=int(msg.seed),
    )
