"""Velithon's own VSP client calling a Rust VSP service.

Usage: velithon_client.py PORT
Prints one JSON object per line: {"step": ..., "ok": result} or {"step": ..., "error": message}.
"""
import asyncio
import json
import socket
import sys

from velithon._velithon import ServiceInfo
from velithon.vsp import ServiceMesh, VSPManager
from velithon.vsp.message import VSPError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(port: int) -> None:
    mesh = ServiceMesh(discovery_type="static")
    mesh.register(ServiceInfo("user-service", "127.0.0.1", port))
    # Velithon's client only receives responses while its manager's workers run.
    manager = VSPManager("python-caller", service_mesh=mesh)
    server = asyncio.create_task(manager.start_server("127.0.0.1", free_port()))
    await asyncio.sleep(0.3)
    client = manager.client

    steps = [
        ("get_user", "get_user", {"user_id": "123"}),
        ("create_user", "create_user", {"name": "Ada", "email": "ada@example.com"}),
        ("health", "health", {}),
        ("unknown_endpoint", "no_such_endpoint", {}),
        ("handler_error", "get_user", {"user_id": "nobody"}),
        ("bad_arguments", "get_user", {"wrong": "field"}),
        ("streaming_endpoint", "watch_users", {}),
        ("after_streaming", "get_user", {"user_id": "123"}),
    ]
    created = None
    for step, endpoint, data in steps:
        try:
            result = await client.call("user-service", endpoint, data)
            print(json.dumps({"step": step, "ok": result}), flush=True)
            if step == "create_user":
                created = result
        except VSPError as err:
            print(json.dumps({"step": step, "error": str(err)}), flush=True)
    try:
        # Behind an auth hook create_user is refused: update the user 123 instead.
        user_id = created["id"] if created else "123"
        updated = await client.call(
            "user-service", "update_user", {"user_id": user_id, "name": "Ada Lovelace"}
        )
        print(json.dumps({"step": "update_user", "ok": updated}), flush=True)
    except VSPError as err:
        print(json.dumps({"step": "update_user", "error": str(err)}), flush=True)
    server.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
