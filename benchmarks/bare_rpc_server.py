"""A bare aiohttp JSON-RPC server: the baseline of `bench_rpc.py`, run as its own process.

It does what any JSON-RPC server on aiohttp must do for one call and nothing more:
read the body, parse the JSON, check it is a request object, and answer a constant
result (read once from a file at start) with the request's id. The node answers the
same requests through the same aiohttp stack, so the ratio between the two is what the
node adds per call: its envelope checks, the hop through the driver's inbox to the
core, the core's step and Ready, the method itself.

    python benchmarks/bare_rpc_server.py --port P --result FILE.json
"""

import argparse
import json

from aiohttp import web


def make_app(result: object) -> web.Application:
    async def handle_rpc(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            reply = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}
        else:
            reply = {"jsonrpc": "2.0", "result": result, "id": message.get("id")}
        return web.Response(text=json.dumps(reply), content_type="application/json")

    async def handle_health(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"status": "ok"}), content_type="application/json")

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/", handle_rpc)
    app.router.add_get("/health", handle_health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--result", required=True, help="a JSON file holding the constant result")
    args = parser.parse_args()
    with open(args.result) as f:
        result = json.load(f)
    web.run_app(make_app(result), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
