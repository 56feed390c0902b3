"""Frames a Python peer may send, written on a raw socket to a Rust VSP server.

Usage: raw_edge_cases.py PORT
Prints one JSON object per line: {"case": ..., "replies": [...]} (replies as parsed JSON), or
{"case": ..., "closed": true} when the server closed the connection.
"""
import json
import socket
import struct
import sys


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def request(request_id, endpoint, body, with_is_response=True) -> bytes:
    header = {"request_id": request_id, "service": "user-service", "endpoint": endpoint}
    if with_is_response:
        header["is_response"] = False
    return frame(json.dumps({"header": header, "body": body}).encode())


def read_frame(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (length,) = struct.unpack(">I", head)
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def case(port, name, payload, expected_replies):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    replies = []
    for _ in range(expected_replies):
        reply = read_frame(sock)
        if reply is None:
            break
        replies.append(reply)
    closed = False
    if name == "not_json":
        closed = read_frame(sock) is None
    sock.close()
    print(json.dumps({"case": name, "replies": replies, "closed": closed}), flush=True)


def main(port: int) -> None:
    case(port, "no_is_response", request("a1", "get_user", {"user_id": "123"}, with_is_response=False), 1)
    case(port, "integer_request_id", request(42, "get_user", {"user_id": "123"}), 1)
    batch = b"".join(request(i, "get_user", {"user_id": "123"}) for i in range(5))
    case(port, "several_frames_one_write", batch, 5)
    case(port, "list_body", request("b1", "get_user", ["123"]), 1)
    case(port, "not_json", frame(b"this is not json"), 1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
