"""The gRPC server: servicers, interceptors, health, reflection and a graceful stop."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from instantorders.v2 import (
    auth_pb2,
    auth_pb2_grpc,
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    exchange_rates_pb2,
    exchange_rates_pb2_grpc,
    options_pb2,
    orders_pb2,
    orders_pb2_grpc,
)

from server import tracing
from server.domain.limits import Budget
from server.domain.service import InstantOrdersService
from server.rpc import servicers
from server.rpc.interceptors import (
    PEERS_ONLY,
    AuthInterceptor,
    ClientAddresses,
    ErrorInterceptor,
)

#: Every request of this API is small; refuse large ones before parsing them.
MAX_MESSAGE_BYTES = 16 * 1024
MAX_METADATA_BYTES = 16 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.so_reuseport", 0),
]

#: Each service: its proto module, its name, how to register it, its servicer.
_SERVICES = (
    (orders_pb2, "OrdersService", orders_pb2_grpc.add_OrdersServiceServicer_to_server,
     servicers.OrdersServicer),
    (catalog_pb2, "CatalogService", catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
     servicers.CatalogServicer),
    (balances_pb2, "BalancesService", balances_pb2_grpc.add_BalancesServiceServicer_to_server,
     servicers.BalancesServicer),
    (exchange_rates_pb2, "ExchangeRatesService",
     exchange_rates_pb2_grpc.add_ExchangeRatesServiceServicer_to_server,
     servicers.ExchangeRatesServicer),
    (auth_pb2, "AuthService", auth_pb2_grpc.add_AuthServiceServicer_to_server,
     servicers.AuthServicer),
    (auth_pb2, "CredentialsService",
     auth_pb2_grpc.add_CredentialsServiceServicer_to_server, servicers.CredentialsServicer),
)  # fmt: skip
SERVICE_NAMES = [
    module.DESCRIPTOR.services_by_name[name].full_name for module, name, *_ in _SERVICES
]
_ISSUE_TOKEN = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name["IssueToken"]
PUBLIC_METHODS = {f"/{_ISSUE_TOKEN.containing_service.full_name}/{_ISSUE_TOKEN.name}"}
#: The rate-limit budget of each method, from its (instantorders.v2.rate_budget) option.
BUDGETS = {
    f"/{method.containing_service.full_name}/{method.name}": (
        Budget.ORDERS
        if method.GetOptions().Extensions[options_pb2.rate_budget] == options_pb2.RATE_BUDGET_ORDERS
        else Budget.READS
    )
    for module, name, *_ in _SERVICES
    for method in module.DESCRIPTOR.services_by_name[name].methods
}


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    #: Set once the process is stopping: readiness stays failed from then on.
    draining: bool = False

    async def set_ready(self, ready: bool) -> None:
        """Whether the API's services can serve calls now (readiness, per service); the
        server itself ("") stays SERVING until it stops (liveness)."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else _NOT_SERVING
        for name in SERVICE_NAMES:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING, refuses new calls and lets in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def start_server(
    service: InstantOrdersService,
    listen: str,
    client_addresses: ClientAddresses = PEERS_ONLY,
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Starts serving on `listen` ("host:port"; port 0 picks a free one); callers'
    addresses are found as `client_addresses` says (by default: their peers). With
    `credentials` the port serves TLS only (server/tls.py); without, plaintext."""
    server = grpc.aio.server(
        interceptors=[
            *tracing.server_interceptors(),
            ErrorInterceptor(),
            AuthInterceptor(service.authenticate, service.limiter.spend, BUDGETS, PUBLIC_METHODS),
        ],
        options=SERVER_OPTIONS,
    )
    for _, _, register, servicer in _SERVICES:
        if servicer is servicers.AuthServicer:
            register(servicers.AuthServicer(service, client_addresses), server)
        else:
            register(servicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        port = (
            server.add_secure_port(listen, credentials)
            if credentials is not None
            else server.add_insecure_port(listen)
        )
    except RuntimeError as error:  # grpc's way of saying the address is taken or invalid
        raise OSError(f"cannot listen for gRPC on {listen}: {error}") from None
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, port)
