"""A Velithon VSP server, called by Rust clients in the interop tests.

Usage: velithon_server.py PORT
Prints "listening" once the server accepts connections; runs until killed.
"""
import asyncio
import socket
import sys

from velithon.vsp import VSPManager


manager = VSPManager("py-users")
USERS = {"123": {"id": "123", "name": "John Doe", "email": "john@example.com"}}


@manager.vsp_service("get_user")
async def get_user(user_id: str) -> dict:
    if user_id not in USERS:
        raise ValueError(f"no user {user_id}")
    return USERS[user_id]


@manager.vsp_service("create_user")
async def create_user(name: str, email: str) -> dict:
    user = {"id": str(len(USERS) + 1000), "name": name, "email": email}
    USERS[user["id"]] = user
    return user


@manager.vsp_service("echo")
def echo(value) -> dict:
    # A sync handler: Velithon accepts both.
    return {"value": value}


@manager.vsp_service("slow_echo")
async def slow_echo(value, ms: int) -> dict:
    await asyncio.sleep(ms / 1000)
    return {"value": value}


async def main(port: int) -> None:
    server = asyncio.create_task(manager.start_server("127.0.0.1", port))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    print("listening", flush=True)
    await server


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
