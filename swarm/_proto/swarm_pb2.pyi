from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_CURRENT: _ClassVar[ProtocolVersion]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_CURRENT: ProtocolVersion

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("protocol_version", "node_id", "package_id", "model_name", "start", "end", "num_layers", "max_context", "sessions", "max_sessions", "memory_budget", "memory_used", "kv_cache_bytes", "hidden_size", "steps_per_s", "prefill_tokens_per_s", "machine")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    package_id: str
    model_name: str
    start: int
    end: int
    num_layers: int
    max_context: int
    sessions: int
    max_sessions: int
    memory_budget: int
    memory_used: int
    kv_cache_bytes: int
    hidden_size: int
    steps_per_s: float
    prefill_tokens_per_s: float
    machine: str
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., package_id: _Optional[str] = ..., model_name: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., num_layers: _Optional[int] = ..., max_context: _Optional[int] = ..., sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., memory_budget: _Optional[int] = ..., memory_used: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., hidden_size: _Optional[int] = ..., steps_per_s: _Optional[float] = ..., prefill_tokens_per_s: _Optional[float] = ..., machine: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "protocol_version")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[HealthReply.Status]
        SERVING: _ClassVar[HealthReply.Status]
        DRAINING: _ClassVar[HealthReply.Status]
    STATUS_UNSPECIFIED: HealthReply.Status
    SERVING: HealthReply.Status
    DRAINING: HealthReply.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    status: HealthReply.Status
    protocol_version: int
    def __init__(self, status: _Optional[_Union[HealthReply.Status, str]] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("address", "node_id", "start", "end")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    address: str
    node_id: str
    start: int
    end: int
    def __init__(self, address: _Optional[str] = ..., node_id: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("protocol_version", "session_id", "package_id", "route", "max_length", "sampling", "return_logits", "origin", "wire_dtype", "ring_head", "prefill_chunk", "private", "client_layers")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RING_HEAD_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: str
    package_id: str
    route: _containers.RepeatedCompositeFieldContainer[Hop]
    max_length: int
    sampling: Sampling
    return_logits: bool
    origin: Origin
    wire_dtype: str
    ring_head: Hop
    prefill_chunk: int
    private: bool
    client_layers: int
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[str] = ..., package_id: _Optional[str] = ..., route: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., max_length: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., return_logits: _Optional[bool] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., wire_dtype: _Optional[str] = ..., ring_head: _Optional[_Union[Hop, _Mapping]] = ..., prefill_chunk: _Optional[int] = ..., private: _Optional[bool] = ..., client_layers: _Optional[int] = ...) -> None: ...

class ReturnLink(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("credential", "route")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    credential: bytes
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, credential: _Optional[bytes] = ..., route: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("step", "position", "tokens", "hidden", "follow", "stop_ids", "partial", "timings", "drafts", "chained")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    STOP_IDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    CHAINED_FIELD_NUMBER: _ClassVar[int]
    step: int
    position: int
    tokens: TokenIds
    hidden: Tensor
    follow: int
    stop_ids: _containers.RepeatedScalarFieldContainer[int]
    partial: bool
    timings: _containers.RepeatedCompositeFieldContainer[HopTiming]
    drafts: _containers.RepeatedScalarFieldContainer[int]
    chained: bool
    def __init__(self, step: _Optional[int] = ..., position: _Optional[int] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., follow: _Optional[int] = ..., stop_ids: _Optional[_Iterable[int]] = ..., partial: _Optional[bool] = ..., timings: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ..., drafts: _Optional[_Iterable[int]] = ..., chained: _Optional[bool] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("seq", "box")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    seq: int
    box: bytes
    def __init__(self, seq: _Optional[int] = ..., box: _Optional[bytes] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("open", "step", "sealed", "attach", "returned")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    step: Step
    sealed: Sealed
    attach: ReturnLink
    returned: StepResult
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ..., attach: _Optional[_Union[ReturnLink, _Mapping]] = ..., returned: _Optional[_Union[StepResult, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HopTiming(_message.Message):
    __slots__ = ("node_id", "compute_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    compute_ms: float
    def __init__(self, node_id: _Optional[str] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step", "token", "logits", "timings", "accepted", "cancelled", "hidden")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    step: int
    token: int
    logits: Tensor
    timings: _containers.RepeatedCompositeFieldContainer[HopTiming]
    accepted: int
    cancelled: bool
    hidden: Tensor
    def __init__(self, step: _Optional[int] = ..., token: _Optional[int] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ..., accepted: _Optional[int] = ..., cancelled: _Optional[bool] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("opened", "result", "sealed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    result: StepResult
    sealed: Sealed
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ...) -> None: ...

class PeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerList(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchFileRequest(_message.Message):
    __slots__ = ("package_id", "file", "offset")
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    package_id: str
    file: str
    offset: int
    def __init__(self, package_id: _Optional[str] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PackageMetaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PackageMeta(_message.Message):
    __slots__ = ("manifest_json", "tokenizer_json", "manifest_signature")
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest_json: bytes
    tokenizer_json: bytes
    manifest_signature: bytes
    def __init__(self, manifest_json: _Optional[bytes] = ..., tokenizer_json: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ...) -> None: ...
