from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Balance(_message.Message):
    __slots__ = ("balance", "currency")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    balance: str
    currency: str
    def __init__(self, balance: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class GetBalancesRequest(_message.Message):
    __slots__ = ("currency",)
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    currency: str
    def __init__(self, currency: _Optional[str] = ...) -> None: ...

class GetBalancesResponse(_message.Message):
    __slots__ = ("balances",)
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    balances: _containers.RepeatedCompositeFieldContainer[Balance]
    def __init__(self, balances: _Optional[_Iterable[_Union[Balance, _Mapping]]] = ...) -> None: ...
