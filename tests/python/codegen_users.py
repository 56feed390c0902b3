"""Calls the user service through the client `vsp codegen python` generated from its description
(the module `users_client`, on PYTHONPATH): a unary call, a typed error, a server stream, a
deadline (a stream that gets no item in time), TLS. Prints one JSON line per check; any failure raises. Type-checked with mypy --strict.

usage: codegen_users.py PORT TLS_PORT CA_FILE (the same service over TLS, and the CA that
signed its certificate)
"""

import asyncio
import json
import ssl
import sys

from users_client import DeadlineExceeded, GetUserError, User, UserServiceClient


def report(check: str, value: object) -> None:
    print(json.dumps({"check": check, "value": value}), flush=True)


async def main(port: int, tls_port: int, ca_file: str) -> None:
    async with await UserServiceClient.connect("127.0.0.1", port, timeout=10.0) as users:
        created: User = await users.create_user("Ada", "ada@example.com")
        fetched = await users.get_user(created["id"])
        assert fetched == created, (fetched, created)
        report("unary", fetched["name"])

        try:
            await users.get_user("nobody")
            raise AssertionError("get_user('nobody') answered")
        except GetUserError as refused:
            report("typed_error", refused.data["NotFound"]["user_id"])

        updated = await users.update_user(created["id"], email="ada@lovelace.org")
        report("optional_argument", [updated["name"], updated["email"]])

        # The stream sends the users created from now on: create two while it is open.
        stream = users.watch_users(timeout=10.0)
        first = asyncio.ensure_future(anext(stream))
        seen: list[str] = []
        for n in range(20):
            # Created until the stream sees one (it may open after the first creates).
            await users.create_user(f"Watcher {n}", f"watcher{n}@example.com")
            done, _ = await asyncio.wait([first], timeout=0.5)
            if done:
                break
        item = await asyncio.wait_for(first, 10.0)
        seen.append(item["name"])
        await stream.aclose()  # leaves early: the server is told to stop
        report("stream", seen)

        # No user is created while this stream is open: its deadline passes (the client's
        # timer or the server's, whichever is first: both are DeadlineExceeded).
        try:
            async for user in users.watch_users(timeout=0.2):
                report("deadline", f"got {user['name']}")
            report("deadline", "ended")
        except DeadlineExceeded as late:
            report("deadline", late.code)

    # The same service over TLS, its certificate checked against the test CA.
    context = ssl.create_default_context(cafile=ca_file)
    async with await UserServiceClient.connect(
        "127.0.0.1", tls_port, ssl=context, server_hostname="localhost"
    ) as secure:
        made = await secure.create_user("Barbara", "barbara@example.com")
        report("tls", (await secure.get_user(made["id"]))["name"])


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
