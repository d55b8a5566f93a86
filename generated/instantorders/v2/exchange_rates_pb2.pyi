import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExchangeRate(_message.Message):
    __slots__ = ("pair", "base", "quote", "rate")
    PAIR_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    pair: str
    base: str
    quote: str
    rate: str
    def __init__(self, pair: _Optional[str] = ..., base: _Optional[str] = ..., quote: _Optional[str] = ..., rate: _Optional[str] = ...) -> None: ...

class GetExchangeRatesRequest(_message.Message):
    __slots__ = ("pairs", "base", "quote")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedScalarFieldContainer[str]
    base: str
    quote: str
    def __init__(self, pairs: _Optional[_Iterable[str]] = ..., base: _Optional[str] = ..., quote: _Optional[str] = ...) -> None: ...

class GetExchangeRatesResponse(_message.Message):
    __slots__ = ("updated_at", "product_currencies", "rates")
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    updated_at: _timestamp_pb2.Timestamp
    product_currencies: _containers.RepeatedScalarFieldContainer[str]
    rates: _containers.RepeatedCompositeFieldContainer[ExchangeRate]
    def __init__(self, updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., product_currencies: _Optional[_Iterable[str]] = ..., rates: _Optional[_Iterable[_Union[ExchangeRate, _Mapping]]] = ...) -> None: ...
