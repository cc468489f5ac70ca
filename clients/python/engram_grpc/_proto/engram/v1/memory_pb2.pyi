import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from engram_grpc._proto.engram.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VectorStorage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_STORAGE_UNSPECIFIED: _ClassVar[VectorStorage]
    VECTOR_STORAGE_MEMORY: _ClassVar[VectorStorage]
    VECTOR_STORAGE_COMPACT: _ClassVar[VectorStorage]
VECTOR_STORAGE_UNSPECIFIED: VectorStorage
VECTOR_STORAGE_MEMORY: VectorStorage
VECTOR_STORAGE_COMPACT: VectorStorage

class RememberRequest(_message.Message):
    __slots__ = ("memory_space_id", "episode", "priority")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    episode: _types_pb2.Episode
    priority: _types_pb2.Priority
    def __init__(self, memory_space_id: _Optional[str] = ..., episode: _Optional[_Union[_types_pb2.Episode, _Mapping]] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ...) -> None: ...

class RememberResponse(_message.Message):
    __slots__ = ("memory_id", "server_sequence", "committed_at", "duplicate", "token")
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    memory_id: str
    server_sequence: int
    committed_at: _timestamp_pb2.Timestamp
    duplicate: bool
    token: _types_pb2.ConsistencyToken
    def __init__(self, memory_id: _Optional[str] = ..., server_sequence: _Optional[int] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicate: _Optional[bool] = ..., token: _Optional[_Union[_types_pb2.ConsistencyToken, _Mapping]] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("memory_space_id", "memory_id")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    memory_id: str
    def __init__(self, memory_space_id: _Optional[str] = ..., memory_id: _Optional[str] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSpaceRequest(_message.Message):
    __slots__ = ("memory_space_id", "dimension", "vector_storage", "default_ttl_seconds")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORAGE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    dimension: int
    vector_storage: VectorStorage
    default_ttl_seconds: float
    def __init__(self, memory_space_id: _Optional[str] = ..., dimension: _Optional[int] = ..., vector_storage: _Optional[_Union[VectorStorage, str]] = ..., default_ttl_seconds: _Optional[float] = ...) -> None: ...

class CreateSpaceResponse(_message.Message):
    __slots__ = ("space", "created")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    space: SpaceInfo
    created: bool
    def __init__(self, space: _Optional[_Union[SpaceInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListSpacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSpacesResponse(_message.Message):
    __slots__ = ("spaces",)
    SPACES_FIELD_NUMBER: _ClassVar[int]
    spaces: _containers.RepeatedCompositeFieldContainer[SpaceInfo]
    def __init__(self, spaces: _Optional[_Iterable[_Union[SpaceInfo, _Mapping]]] = ...) -> None: ...

class DescribeSpaceRequest(_message.Message):
    __slots__ = ("memory_space_id",)
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    def __init__(self, memory_space_id: _Optional[str] = ...) -> None: ...

class DescribeSpaceResponse(_message.Message):
    __slots__ = ("space",)
    SPACE_FIELD_NUMBER: _ClassVar[int]
    space: SpaceInfo
    def __init__(self, space: _Optional[_Union[SpaceInfo, _Mapping]] = ...) -> None: ...

class DeleteSpaceRequest(_message.Message):
    __slots__ = ("memory_space_id",)
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    def __init__(self, memory_space_id: _Optional[str] = ...) -> None: ...

class DeleteSpaceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpaceInfo(_message.Message):
    __slots__ = ("memory_space_id", "dimension", "count", "indexed_count", "queue_depth", "last_sequence", "index_lag_seconds", "quarantined_count", "memory", "vector_storage", "default_ttl_seconds", "expired_count")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORAGE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_COUNT_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    dimension: int
    count: int
    indexed_count: int
    queue_depth: int
    last_sequence: int
    index_lag_seconds: float
    quarantined_count: int
    memory: SpaceMemory
    vector_storage: VectorStorage
    default_ttl_seconds: float
    expired_count: int
    def __init__(self, memory_space_id: _Optional[str] = ..., dimension: _Optional[int] = ..., count: _Optional[int] = ..., indexed_count: _Optional[int] = ..., queue_depth: _Optional[int] = ..., last_sequence: _Optional[int] = ..., index_lag_seconds: _Optional[float] = ..., quarantined_count: _Optional[int] = ..., memory: _Optional[_Union[SpaceMemory, _Mapping]] = ..., vector_storage: _Optional[_Union[VectorStorage, str]] = ..., default_ttl_seconds: _Optional[float] = ..., expired_count: _Optional[int] = ...) -> None: ...

class SpaceMemory(_message.Message):
    __slots__ = ("vectors", "codes", "graph", "episodes", "fresh", "vectors_on_disk")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    VECTORS_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    vectors: int
    codes: int
    graph: int
    episodes: int
    fresh: int
    vectors_on_disk: int
    def __init__(self, vectors: _Optional[int] = ..., codes: _Optional[int] = ..., graph: _Optional[int] = ..., episodes: _Optional[int] = ..., fresh: _Optional[int] = ..., vectors_on_disk: _Optional[int] = ...) -> None: ...

class ListMemoriesRequest(_message.Message):
    __slots__ = ("memory_space_id", "filter", "page_size", "page_token", "include_embeddings")
    MEMORY_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    memory_space_id: str
    filter: _types_pb2.MemoryFilter
    page_size: int
    page_token: str
    include_embeddings: bool
    def __init__(self, memory_space_id: _Optional[str] = ..., filter: _Optional[_Union[_types_pb2.MemoryFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class ListedMemory(_message.Message):
    __slots__ = ("episode", "server_sequence")
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    episode: _types_pb2.Episode
    server_sequence: int
    def __init__(self, episode: _Optional[_Union[_types_pb2.Episode, _Mapping]] = ..., server_sequence: _Optional[int] = ...) -> None: ...

class ListMemoriesResponse(_message.Message):
    __slots__ = ("memories", "next_page_token")
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    memories: _containers.RepeatedCompositeFieldContainer[ListedMemory]
    next_page_token: str
    def __init__(self, memories: _Optional[_Iterable[_Union[ListedMemory, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
