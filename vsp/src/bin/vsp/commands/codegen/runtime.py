# The VSP wire, natively over TCP or TLS: a frame is a u32 big-endian length and that many bytes
# of compact JSON, {"header": {...}, "body": ...}; calls are matched to answers by request id,
# many in flight on one connection.

_MAX_FRAME = 16 * 1024 * 1024
_STREAM_WINDOW = 64


class VspError(Exception):
    """A call that failed: `code` says why (`not_found`, `bad_request`, `handler`, `timeout`,
    `overloaded`, `shutting_down`, `protocol`, `closed`, ...), `message` in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DeadlineExceeded(VspError):
    """The call's deadline passed before the answer came (the server was told to stop)."""


class ConnectionClosed(VspError):
    """The connection closed (or could not be read) before the answer came."""


class ServiceError(VspError):
    """The service refused the call with its typed error: `data` is that error's JSON (each
    endpoint's own subclass types it)."""

    def __init__(self, code: str, message: str, data: object) -> None:
        super().__init__(code, message)
        self.data = data


_Answer = tuple[dict[str, Any], Any]


class Connection:
    """One connection to a VSP server (or a Velithon one), shared by every call made on it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.service = service
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[_Answer]] = {}
        self._streams: dict[int, asyncio.Queue[_Answer | BaseException]] = {}
        self._revision = 0
        self._closed: BaseException | None = None
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        service: str,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
    ) -> "Connection":
        """Connects to `host:port` (with TLS when `ssl` is given), within `connect_timeout`."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=ssl, server_hostname=server_hostname if ssl else None
                ),
                connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectionClosed(
                "connect", f"connecting to {host}:{port} timed out after {connect_timeout} s"
            ) from None
        except OSError as err:
            raise ConnectionClosed("connect", f"cannot connect to {host}:{port}: {err}") from err
        return cls(reader, writer, service)

    async def close(self) -> None:
        """Closes the connection; calls still waiting fail with `ConnectionClosed`."""
        self._fail(ConnectionClosed("closed", "the connection was closed"))
        self._reading.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass

    async def _read(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(4)
                (length,) = struct.unpack(">I", head)
                if length > _MAX_FRAME:
                    raise VspError("protocol", f"a frame of {length} bytes (compressed, or too large)")
                frame = json.loads(await self._reader.readexactly(length))
                if not isinstance(frame, dict) or not isinstance(frame.get("header"), dict):
                    raise VspError("protocol", "a frame without a header")
                header: dict[str, Any] = frame["header"]
                version = header.get("vsp")
                if isinstance(version, int) and version > self._revision:
                    self._revision = version
                request_id = header.get("request_id")
                if not isinstance(request_id, int):
                    continue
                answer = (header, frame.get("body"))
                stream = self._streams.get(request_id)
                if stream is not None:
                    # Unread items never exceed the credit granted (plus the open and the end).
                    if stream.qsize() > _STREAM_WINDOW + 2:
                        raise VspError("protocol", "the server sent stream items beyond its credit")
                    stream.put_nowait(answer)
                    continue
                call = self._calls.pop(request_id, None)
                if call is not None and not call.done():
                    call.set_result(answer)
        except asyncio.CancelledError:
            raise
        except VspError as err:
            self._fail(err)
        except (asyncio.IncompleteReadError, OSError, ValueError) as err:
            self._fail(ConnectionClosed("closed", f"the connection closed: {err!r}"))

    def _fail(self, error: VspError) -> None:
        if self._closed is None:
            self._closed = error
        for call in self._calls.values():
            if not call.done():
                call.set_exception(error)
        self._calls.clear()
        for stream in self._streams.values():
            stream.put_nowait(error)

    def _send(self, header: dict[str, Any], body: object) -> None:
        data = json.dumps({"header": header, "body": body}, separators=(",", ":")).encode()
        self._writer.write(struct.pack(">I", len(data)) + data)

    def _request(
        self,
        endpoint: str,
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> tuple[int, dict[str, Any]]:
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        header: dict[str, Any] = {
            "request_id": request_id,
            "service": self.service,
            "endpoint": endpoint,
            "is_response": False,
        }
        if timeout is not None:
            header["timeout_ms"] = max(1, math.ceil(timeout * 1000))
        if metadata:
            header["meta"] = dict(metadata)
        return request_id, header

    def _control(self, request_id: int, **fields: object) -> None:
        # Only to a server that reads control frames (revision 2 or more; never Velithon).
        if self._revision >= 2 and self._closed is None:
            header: dict[str, Any] = {
                "request_id": request_id,
                "service": "",
                "endpoint": "",
                "is_response": False,
            }
            header.update(fields)
            self._send(header, {})

    async def call(
        self,
        endpoint: str,
        body: Mapping[str, object],
        timeout: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[Any, ServiceError | None]:
        """Calls `endpoint` with the arguments `body`: the answer's body, or the service's typed
        error (any other failure raises)."""
        request_id, header = self._request(endpoint, timeout, metadata)
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._calls[request_id] = answer
        try:
            self._send(header, dict(body))
            await self._writer.drain()
            header, result = await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            self._calls.pop(request_id, None)
            self._control(request_id, cancel=True)
            raise DeadlineExceeded("timeout", f"`{endpoint}` did not answer within {timeout} s") from None
        except asyncio.CancelledError:
            self._calls.pop(request_id, None)
            self._control(request_id, cancel=True)
            raise
        except OSError as err:
            self._calls.pop(request_id, None)
            raise ConnectionClosed("closed", f"cannot send the request: {err}") from err
        return _answer(endpoint, header, result)

    async def stream(
        self,
        endpoint: str,
        body: Mapping[str, object],
        timeout: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Calls the streaming `endpoint`: its items, as they come, under credit (the server
        sends at most a window ahead of what was read). Leaving the loop early cancels the call
        on the server; the deadline covers the whole stream."""
        request_id, header = self._request(endpoint, timeout, metadata)
        header["stream"] = _STREAM_WINDOW
        items: asyncio.Queue[_Answer | BaseException] = asyncio.Queue()
        self._streams[request_id] = items
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        ended = False
        unacknowledged = 0
        try:
            self._send(header, dict(body))
            await self._writer.drain()
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    got = await asyncio.wait_for(items.get(), left)
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(
                        "timeout", f"the stream of `{endpoint}` did not end within {timeout} s"
                    ) from None
                if isinstance(got, BaseException):
                    ended = True
                    raise got
                frame, item = got
                kind = frame.get("stream")
                if kind == "open":
                    continue
                if kind == "item":
                    yield item
                    unacknowledged += 1
                    if unacknowledged >= _STREAM_WINDOW // 2:
                        self._control(request_id, credit=unacknowledged)
                        unacknowledged = 0
                    continue
                ended = True
                if kind == "end" and not frame.get("error_code"):
                    return
                # The end with an error, or an answer before any stream (a refusal).
                _, refused = _answer(endpoint, frame, item)
                if refused is not None:
                    raise refused
                raise VspError("protocol", f"`{endpoint}` answered once instead of with a stream")
        finally:
            self._streams.pop(request_id, None)
            if not ended:
                self._control(request_id, cancel=True)


def _answer(endpoint: str, header: dict[str, Any], body: Any) -> tuple[Any, ServiceError | None]:
    """The body of a successful answer, or raises the error it says: the `error_code` header of
    a VSP server, or an `error` key in the body of a peer that sends no version (Velithon)."""
    code = header.get("error_code")
    failed = bool(code) or (
        "vsp" not in header and isinstance(body, dict) and "error" in body
    )
    if not failed:
        return body, None
    message = body.get("error") if isinstance(body, dict) else None
    text = message if isinstance(message, str) else json.dumps(body)
    code_text = code if isinstance(code, str) and code else "remote"
    if isinstance(body, dict) and "data" in body:
        return None, ServiceError(code_text, text, body["data"])
    if code_text == "timeout":
        # The server saw the deadline pass first: the same outcome as the client seeing it.
        raise DeadlineExceeded(code_text, f"`{endpoint}`: {text}")
    raise VspError(code_text, f"`{endpoint}`: {text}")
