from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class RateBudget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATE_BUDGET_READS: _ClassVar[RateBudget]
    RATE_BUDGET_ORDERS: _ClassVar[RateBudget]
RATE_BUDGET_READS: RateBudget
RATE_BUDGET_ORDERS: RateBudget
OMIT_WHEN_EMPTY_FIELD_NUMBER: _ClassVar[int]
omit_when_empty: _descriptor.FieldDescriptor
HTTP_HEADER_FIELD_NUMBER: _ClassVar[int]
http_header: _descriptor.FieldDescriptor
OAUTH2_TOKEN_RESPONSE_FIELD_NUMBER: _ClassVar[int]
oauth2_token_response: _descriptor.FieldDescriptor
RATE_BUDGET_FIELD_NUMBER: _ClassVar[int]
rate_budget: _descriptor.FieldDescriptor
