from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Price(_message.Message):
    __slots__ = ("price", "from_quantity", "to_quantity")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    FROM_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TO_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    price: str
    from_quantity: int
    to_quantity: int
    def __init__(self, price: _Optional[str] = ..., from_quantity: _Optional[int] = ..., to_quantity: _Optional[int] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("sku", "name", "brand", "brand_category", "brand_sub_category", "types", "format", "country", "currency", "image_url", "prices", "face_value", "percentage_off_face_value", "is_instant_delivery_supported", "descriptions", "instructions", "term_conditions")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    BRAND_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BRAND_SUB_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    FACE_VALUE_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_OFF_FACE_VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_INSTANT_DELIVERY_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    TERM_CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    brand: str
    brand_category: str
    brand_sub_category: str
    types: _containers.RepeatedScalarFieldContainer[str]
    format: str
    country: str
    currency: str
    image_url: str
    prices: _containers.RepeatedCompositeFieldContainer[Price]
    face_value: str
    percentage_off_face_value: str
    is_instant_delivery_supported: bool
    descriptions: _containers.RepeatedScalarFieldContainer[str]
    instructions: _containers.RepeatedScalarFieldContainer[str]
    term_conditions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., brand: _Optional[str] = ..., brand_category: _Optional[str] = ..., brand_sub_category: _Optional[str] = ..., types: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ..., country: _Optional[str] = ..., currency: _Optional[str] = ..., image_url: _Optional[str] = ..., prices: _Optional[_Iterable[_Union[Price, _Mapping]]] = ..., face_value: _Optional[str] = ..., percentage_off_face_value: _Optional[str] = ..., is_instant_delivery_supported: _Optional[bool] = ..., descriptions: _Optional[_Iterable[str]] = ..., instructions: _Optional[_Iterable[str]] = ..., term_conditions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("limit", "page", "sku")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page: int
    sku: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limit: _Optional[int] = ..., page: _Optional[int] = ..., sku: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("total", "page", "page_size", "total_page", "items")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    total: int
    page: int
    page_size: int
    total_page: int
    items: _containers.RepeatedCompositeFieldContainer[Product]
    def __init__(self, total: _Optional[int] = ..., page: _Optional[int] = ..., page_size: _Optional[int] = ..., total_page: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Product, _Mapping]]] = ...) -> None: ...
