import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from instantorders.v2 import money_pb2 as _money_pb2
from instantorders.v2 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    PROCESSING: _ClassVar[OrderStatus]
    COMPLETED: _ClassVar[OrderStatus]
    CANCELLED: _ClassVar[OrderStatus]
ORDER_STATUS_UNSPECIFIED: OrderStatus
PROCESSING: OrderStatus
COMPLETED: OrderStatus
CANCELLED: OrderStatus

class OrderProduct(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price_original", "unit_price", "total_price", "status")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PRICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price_original: _money_pb2.Money
    unit_price: _money_pb2.Money
    total_price: _money_pb2.Money
    status: OrderStatus
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price_original: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., total_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., status: _Optional[_Union[OrderStatus, str]] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("transaction_id", "client_order_number", "pay_with_currency", "grand_total", "created_at", "status", "products", "fx_summary", "refunded_total")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAY_WITH_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    GRAND_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    FX_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    client_order_number: str
    pay_with_currency: str
    grand_total: _money_pb2.Money
    created_at: _timestamp_pb2.Timestamp
    status: OrderStatus
    products: _containers.RepeatedCompositeFieldContainer[OrderProduct]
    fx_summary: _containers.RepeatedCompositeFieldContainer[_money_pb2.FxEntry]
    refunded_total: _money_pb2.Money
    def __init__(self, transaction_id: _Optional[str] = ..., client_order_number: _Optional[str] = ..., pay_with_currency: _Optional[str] = ..., grand_total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., products: _Optional[_Iterable[_Union[OrderProduct, _Mapping]]] = ..., fx_summary: _Optional[_Iterable[_Union[_money_pb2.FxEntry, _Mapping]]] = ..., refunded_total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class BulkOrderLine(_message.Message):
    __slots__ = ("sku", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CreateBulkOrderRequest(_message.Message):
    __slots__ = ("client_order_number", "enable_client_order_number_dup_check", "products", "pay_with_currency", "request_id")
    CLIENT_ORDER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ENABLE_CLIENT_ORDER_NUMBER_DUP_CHECK_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    PAY_WITH_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    client_order_number: str
    enable_client_order_number_dup_check: bool
    products: _containers.RepeatedCompositeFieldContainer[BulkOrderLine]
    pay_with_currency: str
    request_id: str
    def __init__(self, client_order_number: _Optional[str] = ..., enable_client_order_number_dup_check: _Optional[bool] = ..., products: _Optional[_Iterable[_Union[BulkOrderLine, _Mapping]]] = ..., pay_with_currency: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateInstantOrderRequest(_message.Message):
    __slots__ = ("client_order_number", "enable_client_order_number_dup_check", "sku", "pay_with_currency", "request_id")
    CLIENT_ORDER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ENABLE_CLIENT_ORDER_NUMBER_DUP_CHECK_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    PAY_WITH_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    client_order_number: str
    enable_client_order_number_dup_check: bool
    sku: str
    pay_with_currency: str
    request_id: str
    def __init__(self, client_order_number: _Optional[str] = ..., enable_client_order_number_dup_check: _Optional[bool] = ..., sku: _Optional[str] = ..., pay_with_currency: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("transaction_id",)
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    def __init__(self, transaction_id: _Optional[str] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("limit", "page", "transaction_id", "client_order_number")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page: int
    transaction_id: str
    client_order_number: str
    def __init__(self, limit: _Optional[int] = ..., page: _Optional[int] = ..., transaction_id: _Optional[str] = ..., client_order_number: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
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
    items: _containers.RepeatedCompositeFieldContainer[Order]
    def __init__(self, total: _Optional[int] = ..., page: _Optional[int] = ..., page_size: _Optional[int] = ..., total_page: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Order, _Mapping]]] = ...) -> None: ...

class Code(_message.Message):
    __slots__ = ("stock_id", "status", "redeem_code", "pin_code")
    STOCK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REDEEM_CODE_FIELD_NUMBER: _ClassVar[int]
    PIN_CODE_FIELD_NUMBER: _ClassVar[int]
    stock_id: int
    status: OrderStatus
    redeem_code: str
    pin_code: str
    def __init__(self, stock_id: _Optional[int] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., redeem_code: _Optional[str] = ..., pin_code: _Optional[str] = ...) -> None: ...

class ProductCodes(_message.Message):
    __slots__ = ("sku", "quantity", "codes")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    codes: _containers.RepeatedCompositeFieldContainer[Code]
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., codes: _Optional[_Iterable[_Union[Code, _Mapping]]] = ...) -> None: ...

class GetCodesRequest(_message.Message):
    __slots__ = ("transaction_id", "sku", "stock_ids", "after_stock_id", "limit")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    STOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_STOCK_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    sku: str
    stock_ids: _containers.RepeatedScalarFieldContainer[int]
    after_stock_id: int
    limit: int
    def __init__(self, transaction_id: _Optional[str] = ..., sku: _Optional[str] = ..., stock_ids: _Optional[_Iterable[int]] = ..., after_stock_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GetCodesResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[ProductCodes]
    def __init__(self, products: _Optional[_Iterable[_Union[ProductCodes, _Mapping]]] = ...) -> None: ...

class WatchOrderRequest(_message.Message):
    __slots__ = ("transaction_id",)
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    def __init__(self, transaction_id: _Optional[str] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("transaction_id", "request_id")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    request_id: str
    def __init__(self, transaction_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
