import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_LOW: Priority

class Episode(_message.Message):
    __slots__ = ("id", "when", "what", "embedding", "encoding_confidence", "tags", "metadata", "expires_at", "ttl_seconds")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ENCODING_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    when: _timestamp_pb2.Timestamp
    what: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    encoding_confidence: float
    tags: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    ttl_seconds: float
    def __init__(self, id: _Optional[str] = ..., when: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., what: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., encoding_confidence: _Optional[float] = ..., tags: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class Cue(_message.Message):
    __slots__ = ("embedding", "max_results", "similarity_threshold", "when_from", "when_to", "ef_search", "filter", "recency_half_life_seconds")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WHEN_FROM_FIELD_NUMBER: _ClassVar[int]
    WHEN_TO_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RECENCY_HALF_LIFE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    max_results: int
    similarity_threshold: float
    when_from: _timestamp_pb2.Timestamp
    when_to: _timestamp_pb2.Timestamp
    ef_search: int
    filter: MemoryFilter
    recency_half_life_seconds: float
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., max_results: _Optional[int] = ..., similarity_threshold: _Optional[float] = ..., when_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., when_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ef_search: _Optional[int] = ..., filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., recency_half_life_seconds: _Optional[float] = ...) -> None: ...

class MemoryFilter(_message.Message):
    __slots__ = ("tags_all", "tags_any", "tags_none", "metadata")
    TAGS_ALL_FIELD_NUMBER: _ClassVar[int]
    TAGS_ANY_FIELD_NUMBER: _ClassVar[int]
    TAGS_NONE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    tags_all: _containers.RepeatedScalarFieldContainer[str]
    tags_any: _containers.RepeatedScalarFieldContainer[str]
    tags_none: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataCondition]
    def __init__(self, tags_all: _Optional[_Iterable[str]] = ..., tags_any: _Optional[_Iterable[str]] = ..., tags_none: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Iterable[_Union[MetadataCondition, _Mapping]]] = ...) -> None: ...

class MetadataCondition(_message.Message):
    __slots__ = ("key", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class RecallRequest(_message.Message):
    __slots__ = ("memory_space_id", "cue", "batch_size", "include_embeddings", "after")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    cue: Cue
    batch_size: int
    include_embeddings: bool
    after: ConsistencyToken
    def __init__(self, memory_space_id: _Optional[str] = ..., cue: _Optional[_Union[Cue, _Mapping]] = ..., batch_size: _Optional[int] = ..., include_embeddings: _Optional[bool] = ..., after: _Optional[_Union[ConsistencyToken, _Mapping]] = ...) -> None: ...

class ConsistencyToken(_message.Message):
    __slots__ = ("partition", "sequence")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    sequence: int
    def __init__(self, partition: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class RecalledMemory(_message.Message):
    __slots__ = ("episode", "similarity", "confidence", "server_sequence", "indexed", "score", "recency_weight")
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RECENCY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    episode: Episode
    similarity: float
    confidence: float
    server_sequence: int
    indexed: bool
    score: float
    recency_weight: float
    def __init__(self, episode: _Optional[_Union[Episode, _Mapping]] = ..., similarity: _Optional[float] = ..., confidence: _Optional[float] = ..., server_sequence: _Optional[int] = ..., indexed: _Optional[bool] = ..., score: _Optional[float] = ..., recency_weight: _Optional[float] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("memories", "more", "snapshot_sequence")
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    memories: _containers.RepeatedCompositeFieldContainer[RecalledMemory]
    more: bool
    snapshot_sequence: int
    def __init__(self, memories: _Optional[_Iterable[_Union[RecalledMemory, _Mapping]]] = ..., more: _Optional[bool] = ..., snapshot_sequence: _Optional[int] = ...) -> None: ...
