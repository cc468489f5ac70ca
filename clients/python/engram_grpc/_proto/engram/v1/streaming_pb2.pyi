import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from engram_grpc._proto.engram.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObserveRequest(_message.Message):
    __slots__ = ("init", "observation", "flow", "close")
    INIT_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    init: StreamInit
    observation: Observation
    flow: FlowControl
    close: StreamClose
    def __init__(self, init: _Optional[_Union[StreamInit, _Mapping]] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., flow: _Optional[_Union[FlowControl, _Mapping]] = ..., close: _Optional[_Union[StreamClose, _Mapping]] = ...) -> None: ...

class StreamInit(_message.Message):
    __slots__ = ("memory_space_id", "resume_session_id", "enable_backpressure")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLE_BACKPRESSURE_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    resume_session_id: str
    enable_backpressure: bool
    def __init__(self, memory_space_id: _Optional[str] = ..., resume_session_id: _Optional[str] = ..., enable_backpressure: _Optional[bool] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("sequence_number", "episode", "priority")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    episode: _types_pb2.Episode
    priority: _types_pb2.Priority
    def __init__(self, sequence_number: _Optional[int] = ..., episode: _Optional[_Union[_types_pb2.Episode, _Mapping]] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ...) -> None: ...

class FlowControl(_message.Message):
    __slots__ = ("action", "buffer_remaining")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[FlowControl.Action]
        ACTION_PAUSE: _ClassVar[FlowControl.Action]
        ACTION_RESUME: _ClassVar[FlowControl.Action]
        ACTION_BUFFER_STATUS: _ClassVar[FlowControl.Action]
    ACTION_UNSPECIFIED: FlowControl.Action
    ACTION_PAUSE: FlowControl.Action
    ACTION_RESUME: FlowControl.Action
    ACTION_BUFFER_STATUS: FlowControl.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUFFER_REMAINING_FIELD_NUMBER: _ClassVar[int]
    action: FlowControl.Action
    buffer_remaining: int
    def __init__(self, action: _Optional[_Union[FlowControl.Action, str]] = ..., buffer_remaining: _Optional[int] = ...) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ("drain",)
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    drain: bool
    def __init__(self, drain: _Optional[bool] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("init_ack", "ack", "status", "closed")
    INIT_ACK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    init_ack: StreamInitAck
    ack: ObservationAck
    status: StreamStatus
    closed: StreamClosed
    def __init__(self, init_ack: _Optional[_Union[StreamInitAck, _Mapping]] = ..., ack: _Optional[_Union[ObservationAck, _Mapping]] = ..., status: _Optional[_Union[StreamStatus, _Mapping]] = ..., closed: _Optional[_Union[StreamClosed, _Mapping]] = ...) -> None: ...

class StreamCapabilities(_message.Message):
    __slots__ = ("queue_capacity", "dimension", "max_message_size", "max_recalls_per_stream")
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECALLS_PER_STREAM_FIELD_NUMBER: _ClassVar[int]
    queue_capacity: int
    dimension: int
    max_message_size: int
    max_recalls_per_stream: int
    def __init__(self, queue_capacity: _Optional[int] = ..., dimension: _Optional[int] = ..., max_message_size: _Optional[int] = ..., max_recalls_per_stream: _Optional[int] = ...) -> None: ...

class StreamInitAck(_message.Message):
    __slots__ = ("session_id", "last_acked_sequence", "capabilities")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_acked_sequence: int
    capabilities: StreamCapabilities
    def __init__(self, session_id: _Optional[str] = ..., last_acked_sequence: _Optional[int] = ..., capabilities: _Optional[_Union[StreamCapabilities, _Mapping]] = ...) -> None: ...

class ObservationAck(_message.Message):
    __slots__ = ("sequence_number", "status", "memory_id", "server_sequence", "committed_at", "reason", "retry_after_ms", "message", "replayed", "duplicate", "token")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACK_UNSPECIFIED: _ClassVar[ObservationAck.Status]
        ACK_ACCEPTED: _ClassVar[ObservationAck.Status]
        ACK_REJECTED: _ClassVar[ObservationAck.Status]
    ACK_UNSPECIFIED: ObservationAck.Status
    ACK_ACCEPTED: ObservationAck.Status
    ACK_REJECTED: ObservationAck.Status
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REJECT_UNSPECIFIED: _ClassVar[ObservationAck.Reason]
        REJECT_OVERLOADED: _ClassVar[ObservationAck.Reason]
        REJECT_INVALID: _ClassVar[ObservationAck.Reason]
        REJECT_OUT_OF_ORDER: _ClassVar[ObservationAck.Reason]
        REJECT_UNAUTHORIZED: _ClassVar[ObservationAck.Reason]
        REJECT_CLOSED: _ClassVar[ObservationAck.Reason]
        REJECT_UNAVAILABLE: _ClassVar[ObservationAck.Reason]
    REJECT_UNSPECIFIED: ObservationAck.Reason
    REJECT_OVERLOADED: ObservationAck.Reason
    REJECT_INVALID: ObservationAck.Reason
    REJECT_OUT_OF_ORDER: ObservationAck.Reason
    REJECT_UNAUTHORIZED: ObservationAck.Reason
    REJECT_CLOSED: ObservationAck.Reason
    REJECT_UNAVAILABLE: ObservationAck.Reason
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    status: ObservationAck.Status
    memory_id: str
    server_sequence: int
    committed_at: _timestamp_pb2.Timestamp
    reason: ObservationAck.Reason
    retry_after_ms: int
    message: str
    replayed: bool
    duplicate: bool
    token: _types_pb2.ConsistencyToken
    def __init__(self, sequence_number: _Optional[int] = ..., status: _Optional[_Union[ObservationAck.Status, str]] = ..., memory_id: _Optional[str] = ..., server_sequence: _Optional[int] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[_Union[ObservationAck.Reason, str]] = ..., retry_after_ms: _Optional[int] = ..., message: _Optional[str] = ..., replayed: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., token: _Optional[_Union[_types_pb2.ConsistencyToken, _Mapping]] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("state", "queue_depth", "queue_capacity", "pressure", "suggested_rate", "message")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[StreamStatus.State]
        STATE_ACTIVE: _ClassVar[StreamStatus.State]
        STATE_PAUSED: _ClassVar[StreamStatus.State]
        STATE_BACKPRESSURE: _ClassVar[StreamStatus.State]
        STATE_OVERLOADED: _ClassVar[StreamStatus.State]
        STATE_CLOSING: _ClassVar[StreamStatus.State]
    STATE_UNSPECIFIED: StreamStatus.State
    STATE_ACTIVE: StreamStatus.State
    STATE_PAUSED: StreamStatus.State
    STATE_BACKPRESSURE: StreamStatus.State
    STATE_OVERLOADED: StreamStatus.State
    STATE_CLOSING: StreamStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_RATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: StreamStatus.State
    queue_depth: int
    queue_capacity: int
    pressure: float
    suggested_rate: float
    message: str
    def __init__(self, state: _Optional[_Union[StreamStatus.State, str]] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., pressure: _Optional[float] = ..., suggested_rate: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class StreamClosed(_message.Message):
    __slots__ = ("final_sequence", "accepted", "rejected")
    FINAL_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    final_sequence: int
    accepted: int
    rejected: int
    def __init__(self, final_sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class FlowRequest(_message.Message):
    __slots__ = ("request_id", "observe", "recall")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    observe: ObserveRequest
    recall: _types_pb2.RecallRequest
    def __init__(self, request_id: _Optional[str] = ..., observe: _Optional[_Union[ObserveRequest, _Mapping]] = ..., recall: _Optional[_Union[_types_pb2.RecallRequest, _Mapping]] = ...) -> None: ...

class FlowResponse(_message.Message):
    __slots__ = ("request_id", "observe", "recall", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    observe: ObserveResponse
    recall: _types_pb2.RecallResponse
    error: FlowError
    def __init__(self, request_id: _Optional[str] = ..., observe: _Optional[_Union[ObserveResponse, _Mapping]] = ..., recall: _Optional[_Union[_types_pb2.RecallResponse, _Mapping]] = ..., error: _Optional[_Union[FlowError, _Mapping]] = ...) -> None: ...

class FlowError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
