from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_FAILED: Outcome

class BranchRequest(_message.Message):
    __slots__ = ("tx_id", "branch_index", "branch_name", "action", "payload", "attempt", "deadline_unix_ms", "outputs", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TX_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    BRANCH_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tx_id: str
    branch_index: int
    branch_name: str
    action: str
    payload: bytes
    attempt: int
    deadline_unix_ms: int
    outputs: _containers.RepeatedCompositeFieldContainer[StepOutput]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, tx_id: _Optional[str] = ..., branch_index: _Optional[int] = ..., branch_name: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., attempt: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[StepOutput, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StepOutput(_message.Message):
    __slots__ = ("index", "name", "output")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    output: bytes
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., output: _Optional[bytes] = ...) -> None: ...

class BranchReply(_message.Message):
    __slots__ = ("outcome", "output", "message")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    output: bytes
    message: str
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., output: _Optional[bytes] = ..., message: _Optional[str] = ...) -> None: ...
