from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
OMIT_WHEN_EMPTY_FIELD_NUMBER: _ClassVar[int]
omit_when_empty: _descriptor.FieldDescriptor
OAUTH2_TOKEN_RESPONSE_FIELD_NUMBER: _ClassVar[int]
oauth2_token_response: _descriptor.FieldDescriptor
