"""The bare forwarder: the REST side of the framework alone.

An aiohttp handler that parses the JSON body, calls a grpc.aio server with the
request message (the ceiling's canned replies, bench/ceiling.py), parses its
reply and writes it as JSON: nothing else (no routes table, middlewares,
request ids, authentication or generic transcoding). What the production
gateway costs beyond this is the gateway's own cost.

    python -m bench.forwarder --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json

import grpc
from aiohttp import web
from instantorders.v2 import orders_pb2, orders_pb2_grpc

from server.rpc.app import SERVER_OPTIONS

_STATUS = {value: name for name, value in orders_pb2.OrderStatus.items()}


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    channel_key = web.AppKey("channel", grpc.aio.Channel)

    async def open_channel(app: web.Application) -> None:
        app[channel_key] = grpc.aio.insecure_channel(upstream, options=SERVER_OPTIONS)

    async def close_channel(app: web.Application) -> None:
        await app[channel_key].close()

    async def create_instant_order(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        stub = orders_pb2_grpc.OrdersServiceStub(request.app[channel_key])
        order = await stub.CreateInstantOrder(
            orders_pb2.CreateInstantOrderRequest(
                sku=body["sku"], client_order_number=body.get("clientOrderNumber", "")
            )
        )
        data = {
            "transactionId": order.transaction_id,
            "clientOrderNumber": order.client_order_number,
            "grandTotal": {
                "amount": order.grand_total.amount,
                "currency": order.grand_total.currency,
            },
            "status": _STATUS[order.status],
        }
        return web.Response(body=json.dumps({"data": data}), content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_post("/v2/orders/instant", create_instant_order)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(open_channel)
    app.on_cleanup.append(close_channel)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(create_app(args.upstream), host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
