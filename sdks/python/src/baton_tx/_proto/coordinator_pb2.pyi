from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_KIND_UNSPECIFIED: _ClassVar[StepKind]
    STEP_KIND_COMPENSATABLE: _ClassVar[StepKind]
    STEP_KIND_PIVOT: _ClassVar[StepKind]
    STEP_KIND_RETRIABLE: _ClassVar[StepKind]

class TxKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TX_KIND_UNSPECIFIED: _ClassVar[TxKind]
    TX_KIND_SAGA: _ClassVar[TxKind]
    TX_KIND_TWO_PHASE: _ClassVar[TxKind]

class TxState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TX_STATE_UNSPECIFIED: _ClassVar[TxState]
    TX_STATE_RUNNING: _ClassVar[TxState]
    TX_STATE_COMPENSATING: _ClassVar[TxState]
    TX_STATE_COMMITTED: _ClassVar[TxState]
    TX_STATE_COMPENSATED: _ClassVar[TxState]
    TX_STATE_FAILED: _ClassVar[TxState]
    TX_STATE_PREPARING: _ClassVar[TxState]
    TX_STATE_COMMITTING: _ClassVar[TxState]
    TX_STATE_ABORTING: _ClassVar[TxState]
    TX_STATE_ABORTED: _ClassVar[TxState]
STEP_KIND_UNSPECIFIED: StepKind
STEP_KIND_COMPENSATABLE: StepKind
STEP_KIND_PIVOT: StepKind
STEP_KIND_RETRIABLE: StepKind
TX_KIND_UNSPECIFIED: TxKind
TX_KIND_SAGA: TxKind
TX_KIND_TWO_PHASE: TxKind
TX_STATE_UNSPECIFIED: TxState
TX_STATE_RUNNING: TxState
TX_STATE_COMPENSATING: TxState
TX_STATE_COMMITTED: TxState
TX_STATE_COMPENSATED: TxState
TX_STATE_FAILED: TxState
TX_STATE_PREPARING: TxState
TX_STATE_COMMITTING: TxState
TX_STATE_ABORTING: TxState
TX_STATE_ABORTED: TxState

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff_ms", "max_backoff_ms")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff_ms: int
    max_backoff_ms: int
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff_ms: _Optional[int] = ..., max_backoff_ms: _Optional[int] = ...) -> None: ...

class SagaStep(_message.Message):
    __slots__ = ("name", "service", "endpoint", "action", "compensate", "payload", "kind", "stage", "timeout_ms", "retry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    COMPENSATE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    endpoint: str
    action: str
    compensate: str
    payload: bytes
    kind: StepKind
    stage: int
    timeout_ms: int
    retry: RetryPolicy
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., endpoint: _Optional[str] = ..., action: _Optional[str] = ..., compensate: _Optional[str] = ..., payload: _Optional[bytes] = ..., kind: _Optional[_Union[StepKind, str]] = ..., stage: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ...) -> None: ...

class Saga(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class TwoPhaseBranch(_message.Message):
    __slots__ = ("name", "service", "endpoint", "action", "payload", "timeout_ms", "retry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    endpoint: str
    action: str
    payload: bytes
    timeout_ms: int
    retry: RetryPolicy
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., endpoint: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ...) -> None: ...

class TwoPhase(_message.Message):
    __slots__ = ("branches", "prepare_timeout_ms")
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    PREPARE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    branches: _containers.RepeatedCompositeFieldContainer[TwoPhaseBranch]
    prepare_timeout_ms: int
    def __init__(self, branches: _Optional[_Iterable[_Union[TwoPhaseBranch, _Mapping]]] = ..., prepare_timeout_ms: _Optional[int] = ...) -> None: ...

class StartRequest(_message.Message):
    __slots__ = ("saga", "two_phase", "idempotency_key", "labels", "timeout_ms", "wait", "wait_timeout_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SAGA_FIELD_NUMBER: _ClassVar[int]
    TWO_PHASE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    saga: Saga
    two_phase: TwoPhase
    idempotency_key: str
    labels: _containers.ScalarMap[str, str]
    timeout_ms: int
    wait: bool
    wait_timeout_ms: int
    def __init__(self, saga: _Optional[_Union[Saga, _Mapping]] = ..., two_phase: _Optional[_Union[TwoPhase, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., timeout_ms: _Optional[int] = ..., wait: bool = ..., wait_timeout_ms: _Optional[int] = ...) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ("tx_id", "created", "transaction")
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    created: bool
    transaction: Transaction
    def __init__(self, tx_id: _Optional[str] = ..., created: bool = ..., transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class Branch(_message.Message):
    __slots__ = ("index", "name", "stage", "kind", "target", "action", "compensate", "state", "attempts", "output", "last_error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    COMPENSATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    stage: int
    kind: StepKind
    target: str
    action: str
    compensate: str
    state: str
    attempts: int
    output: bytes
    last_error: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., stage: _Optional[int] = ..., kind: _Optional[_Union[StepKind, str]] = ..., target: _Optional[str] = ..., action: _Optional[str] = ..., compensate: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., output: _Optional[bytes] = ..., last_error: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("tx_id", "kind", "state", "labels", "idempotency_key", "created_at_ms", "updated_at_ms", "deadline_at_ms", "last_error", "branches", "owner", "epoch", "in_doubt")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    IN_DOUBT_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    kind: TxKind
    state: TxState
    labels: _containers.ScalarMap[str, str]
    idempotency_key: str
    created_at_ms: int
    updated_at_ms: int
    deadline_at_ms: int
    last_error: str
    branches: _containers.RepeatedCompositeFieldContainer[Branch]
    owner: str
    epoch: int
    in_doubt: bool
    def __init__(self, tx_id: _Optional[str] = ..., kind: _Optional[_Union[TxKind, str]] = ..., state: _Optional[_Union[TxState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., deadline_at_ms: _Optional[int] = ..., last_error: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[Branch, _Mapping]]] = ..., owner: _Optional[str] = ..., epoch: _Optional[int] = ..., in_doubt: bool = ...) -> None: ...

class TxEvent(_message.Message):
    __slots__ = ("tx_id", "seq", "at_ms", "kind", "branch", "detail")
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    seq: int
    at_ms: int
    kind: str
    branch: int
    detail: str
    def __init__(self, tx_id: _Optional[str] = ..., seq: _Optional[int] = ..., at_ms: _Optional[int] = ..., kind: _Optional[str] = ..., branch: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("tx_id",)
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    def __init__(self, tx_id: _Optional[str] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("tx_id", "timeout_ms")
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    timeout_ms: int
    def __init__(self, tx_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("tx_id",)
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    def __init__(self, tx_id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("states", "labels", "created_after_ms", "created_before_ms", "limit", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[TxState]
    labels: _containers.ScalarMap[str, str]
    created_after_ms: int
    created_before_ms: int
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[TxState, str]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_after_ms: _Optional[int] = ..., created_before_ms: _Optional[int] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("tx_id", "after_seq", "limit")
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    after_seq: int
    limit: int
    def __init__(self, tx_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class EventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TxEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TxEvent, _Mapping]]] = ...) -> None: ...

class RetryRequest(_message.Message):
    __slots__ = ("tx_id",)
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    def __init__(self, tx_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("tx_id", "reason")
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    reason: str
    def __init__(self, tx_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ParticipantEndpoint(_message.Message):
    __slots__ = ("service", "endpoint", "weight", "zone", "expires_at_ms", "policy", "outstanding", "ejected_until_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    EJECTED_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoint: str
    weight: int
    zone: str
    expires_at_ms: int
    policy: str
    outstanding: int
    ejected_until_ms: int
    def __init__(self, service: _Optional[str] = ..., endpoint: _Optional[str] = ..., weight: _Optional[int] = ..., zone: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., policy: _Optional[str] = ..., outstanding: _Optional[int] = ..., ejected_until_ms: _Optional[int] = ...) -> None: ...

class RegisterParticipantRequest(_message.Message):
    __slots__ = ("service", "endpoint", "weight", "zone", "ttl_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoint: str
    weight: int
    zone: str
    ttl_ms: int
    def __init__(self, service: _Optional[str] = ..., endpoint: _Optional[str] = ..., weight: _Optional[int] = ..., zone: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class RegisterParticipantResponse(_message.Message):
    __slots__ = ("participant",)
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    participant: ParticipantEndpoint
    def __init__(self, participant: _Optional[_Union[ParticipantEndpoint, _Mapping]] = ...) -> None: ...

class HeartbeatParticipantRequest(_message.Message):
    __slots__ = ("service", "endpoint", "ttl_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoint: str
    ttl_ms: int
    def __init__(self, service: _Optional[str] = ..., endpoint: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class HeartbeatParticipantResponse(_message.Message):
    __slots__ = ("participant",)
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    participant: ParticipantEndpoint
    def __init__(self, participant: _Optional[_Union[ParticipantEndpoint, _Mapping]] = ...) -> None: ...

class DeregisterParticipantRequest(_message.Message):
    __slots__ = ("service", "endpoint")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoint: str
    def __init__(self, service: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class DeregisterParticipantResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: bool = ...) -> None: ...

class ListParticipantsRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class ListParticipantsResponse(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantEndpoint]
    def __init__(self, participants: _Optional[_Iterable[_Union[ParticipantEndpoint, _Mapping]]] = ...) -> None: ...

class ListCoordinatorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorInfo(_message.Message):
    __slots__ = ("id", "address", "started_at_ms", "heartbeat_at_ms", "version", "owned")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    started_at_ms: int
    heartbeat_at_ms: int
    version: str
    owned: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., heartbeat_at_ms: _Optional[int] = ..., version: _Optional[str] = ..., owned: _Optional[int] = ...) -> None: ...

class ListCoordinatorsResponse(_message.Message):
    __slots__ = ("coordinators",)
    COORDINATORS_FIELD_NUMBER: _ClassVar[int]
    coordinators: _containers.RepeatedCompositeFieldContainer[CoordinatorInfo]
    def __init__(self, coordinators: _Optional[_Iterable[_Union[CoordinatorInfo, _Mapping]]] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("older_than_ms", "batch")
    OLDER_THAN_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    older_than_ms: int
    batch: int
    def __init__(self, older_than_ms: _Optional[int] = ..., batch: _Optional[int] = ...) -> None: ...

class PurgeResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...
