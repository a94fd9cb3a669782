"""``ip2p serve``: an HTTP API over one :class:`~ip2p.editor.Editor` (FastAPI + uvicorn).

Endpoints: ``POST /v1/images/edits`` (the OpenAI images-edit shape, so the ``openai`` client works
against it with ``base_url``), ``POST /v1/edit`` (every :class:`~ip2p.options.EditOptions` field,
multipart or JSON with base64), ``POST /v1/cancel/{id}``, ``GET /v1/models``, ``GET /health``, OpenAPI
at ``/openapi.json`` with a self-contained page at ``/docs``, and the web UI at ``/`` unless disabled.

Model work never runs on the event loop: requests wait in a bounded queue and run in a worker
thread pool of ``concurrency`` threads (1 by default: one edit at a time per device). A full queue
answers 429 with ``Retry-After``. Every request has an id (``X-Request-Id``, the client's own when it
sends one). An edit stops at its next denoising step when its client disconnects, when it passes the
time limit (504), when ``POST /v1/cancel/{id}`` names it (409) or when the server shuts down (503);
SIGTERM/SIGINT stop accepting, give running edits a short grace, cancel them and exit.

Every error is one JSON line in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with the ``http_status`` of the :class:`~ip2p.errors.Ip2pError` subclass that was raised; clients
never see filesystem paths (the model is known by its name). Request bodies over the size limit get
413; with an API key set, every route but ``/health`` answers 401 without it.
"""

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hmac
import json
import math
import re
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadImage, BadOptions, Cancelled, Ip2pError, ModelNotFound
from .options import BY_NAME, OPTIONS, EditOptions, check_instruction, parse_bool

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "IP2P_API_KEY"
KEY_COOKIE = "ip2p_api_key"
FORMATS = ("png", "jpeg", "webp")


@dataclass
class ServerSettings:
    """Limits and switches of one server. Defaults suit one GPU behind a loopback address."""

    api_key: str | None = None
    concurrency: int = 1  # editor calls at once; one device does one edit at a time
    max_queue: int = 64  # requests allowed to wait beyond those running; more get 429
    max_request_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000  # input image limit, checked from the header
    max_images: int = 4  # n / num_images per request
    max_resolution: int = 1024
    default_resolution: int | None = None  # a request giving none: this, else the model's native size
    ui: bool = True
    time_limit: float | None = 600.0  # seconds a request may take once read, waiting included; None: no limit
    shutdown_grace: float = 5.0  # seconds running edits may go on after SIGTERM/SIGINT before they are cancelled
    max_video_frames: int = 48  # frames per POST /v1/video (a 413 past it)
    max_video_pixels: int = 48 * 512 * 512  # all frames of one video together (a 413 past it)
    c2pa_cert: str | None = None  # PEM chain: outputs get signed C2PA content credentials (ip2p.provenance)
    c2pa_key: str | None = None
    #: request batching: unmasked requests that can share a UNet batch (Editor.batch_key) run as one,
    #: up to this many output images. 1 (off) by default: on this project's CPUs it measured no gain
    #: (docs/serving.md), and a batched result may differ from the same request alone by float
    #: rounding unless exact_batches pads every batch (which a lone request then pays for)
    max_batch: int = 1
    batch_wait_ms: float = 10.0  # how long a first request waits for others to join it (an idle device)
    #: run every shared batch at max_batch outputs (padded), so that no output's bits depend on its
    #: neighbours; off, they may differ by float rounding (kernels choose by batch shape)
    exact_batches: bool = False


class QueueFull(Ip2pError):
    """Too many requests are waiting; the client should retry after ``retry_after`` seconds."""

    http_status = 429
    error_type, error_code = "rate_limit_error", "queue_full"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Unsupported(Ip2pError):
    """A request field asks for something this server does not do."""

    http_status = 400


class TimedOut(Ip2pError):
    """The edit ran past the server's time limit and was stopped."""

    http_status = 504
    error_type, error_code = "timeout", "timeout"


class RequestCancelled(Ip2pError):
    """``POST /v1/cancel/{id}`` cancelled this request."""

    http_status = 409
    error_type, error_code = "cancelled", "cancelled"


class ShuttingDown(Ip2pError):
    """The server is stopping; the edit was cancelled or never started."""

    http_status = 503
    error_type, error_code = "server_error", "shutting_down"


class RequestIdInUse(Ip2pError):
    """A client sent the ``X-Request-Id`` of a request that is still waiting or running."""

    http_status = 409
    error_type, error_code = "invalid_request_error", "request_id_in_use"


class UnknownRequest(Ip2pError):
    """``POST /v1/cancel/{id}`` named no waiting or running edit."""

    http_status = 404
    error_code = "unknown_request"


#: How long a request's handler waits between looks at its client, clock and cancel flag.
POLL_S = 0.1


class Job:
    """One edit request: its id, and a flag its worker checks at every denoising step."""

    def __init__(self, request_id: str, time_limit: float | None = None):
        self.id = request_id
        self.time_limit = time_limit
        self.created = time.monotonic()
        self.started = False  # a worker thread has it
        self.reason: str | None = None  # why it was cancelled: cancel, disconnect, timeout, shutdown
        self._flag = threading.Event()

    def cancel(self, reason: str) -> bool:
        """Ask the edit to stop (thread- and signal-safe); False when it was already asked."""
        if self._flag.is_set():
            return False
        self.reason = reason
        self._flag.set()
        return True

    def check(self, step: int = 0, total: int = 0) -> None:
        """The editor's step callback: raises :class:`Cancelled` once the job is cancelled."""
        if self._flag.is_set():
            raise Cancelled(f"request {self.id} was cancelled ({self.reason})")

    def overdue(self) -> bool:
        return self.time_limit is not None and time.monotonic() - self.created >= self.time_limit

    def error(self) -> Ip2pError:
        """What the client is told about a cancelled job."""
        if self.reason == "timeout":
            return TimedOut(f"the edit did not finish within this server's time limit of {self.time_limit:g} s "
                            "and was stopped; ask for fewer steps, a lower resolution or a smaller n")
        if self.reason == "cancel":
            return RequestCancelled(f"request {self.id} was cancelled (POST /v1/cancel/{self.id})")
        if self.reason == "shutdown":
            return ShuttingDown("the server is shutting down; the edit was cancelled; retry when it is back")
        return Cancelled(f"request {self.id} was abandoned: the client disconnected")


class EditQueue:
    """A bounded wait line in front of a small thread pool that runs the editor.

    A slot stays taken until the worker thread is really done with it, not when the request is
    answered: a cancelled or timed-out edit holds its slot (and counts as running) until it stops at
    its next denoising step, so nothing starts behind it on a busy device.
    """

    def __init__(self, concurrency: int = 1, max_waiting: int = 64, max_batch: int = 1, batch_wait: float = 0.0):
        if concurrency < 1 or max_waiting < 0:
            raise BadOptions("concurrency must be >= 1 and the queue size >= 0")
        if max_batch < 1 or not 0 <= batch_wait <= 10:
            raise BadOptions("max_batch must be >= 1 and the batch wait between 0 and 10 s")
        self.concurrency, self.max_waiting = concurrency, max_waiting
        self.max_batch, self.batch_wait = max_batch, batch_wait
        self.batches = self.batched = 0  # editor calls run_batched made, and the requests they served
        self._groups: dict[Any, _Group] = {}  # the open group of each batch key
        self._dispatchers: set[asyncio.Task] = set()
        self.waiting = self.running = self.done = self.rejected = 0
        self.cancelled = self.timed_out = self.disconnected = 0
        self.jobs: dict[str, Job] = {}  # waiting or running requests, by id
        self.closing = False
        self.shutdown_report: dict[str, Any] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ip2p-edit")
        self._durations: collections.deque[float] = collections.deque(maxlen=20)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: average edit time x queued work per worker."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * (self.waiting + self.running) / self.concurrency))

    def register(self, job: Job) -> None:
        if self.closing:
            raise ShuttingDown("the server is shutting down; retry when it is back")
        if job.id in self.jobs:
            raise RequestIdInUse(f"request id {job.id!r} belongs to a request that is still waiting or running",
                                 param="X-Request-Id")
        self.jobs[job.id] = job

    def unregister(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        counter = {"cancel": "cancelled", "timeout": "timed_out", "disconnect": "disconnected"}.get(job.reason or "")
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)

    async def run(self, fn, job: Job | None = None):
        """Run ``fn()`` in a worker thread once a slot is free; QueueFull when the line is full."""
        self._admit()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        if self.closing or (job is not None and job.reason):
            self._slots.release()
            raise job.error() if job is not None and job.reason else ShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()

        def account() -> None:
            self.running -= 1
            if job is None or not job.reason:
                self.done += 1
                self._durations.append(time.perf_counter() - started)
            self._slots.release()

        def finished(_future) -> None:  # in the worker thread (or here, for a future never run)
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
                loop.call_soon_threadsafe(account)

        try:
            future = self._pool.submit(fn)
        except RuntimeError:  # the pool was closed
            self._slots.release()
            raise ShuttingDown("the server is shutting down; retry when it is back") from None
        self.running += 1
        if job is not None:
            job.started = True
        future.add_done_callback(finished)
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when nobody awaits
        return await asyncio.shield(waited)  # a handler that stops waiting does not free the slot

    def _admit(self) -> None:
        """Refuse a new request when the server is stopping or the wait line is full (429)."""
        if self.closing:
            raise ShuttingDown("the server is shutting down; retry when it is back")
        if self.waiting >= self.max_waiting and self._slots.locked():
            self.rejected += 1
            wait = self.retry_after()
            raise QueueFull(f"server busy: {self.running} running and {self.waiting} waiting; retry in {wait} s", wait)

    async def run_batched(self, key: Any, item: Any, job: Job, run_many, outputs: int = 1):
        """Like :meth:`run`, for a request that may share one editor call with others of the same ``key``.

        It joins the open group of its key (or opens one). A group waits up to ``batch_wait`` seconds
        for company (less once it holds ``max_batch`` outputs), then for a slot, taking in whoever comes
        meanwhile, and runs ``run_many(items, jobs)`` in a worker thread; that returns one result (or
        exception) per item, and this call returns its own. Limits, 429, counts and cancelling stay per
        request: a request cancelled while it waits leaves its group; a running group stops at its next
        denoising step only once all its requests are cancelled (the others' results must not change).
        """
        self._admit()
        loop = asyncio.get_running_loop()
        self.waiting += 1
        group = self._groups.get(key)
        if group is None or group.outputs + outputs > self.max_batch:
            group = self._groups[key] = _Group(key)
            task = asyncio.ensure_future(self._dispatch(group, run_many))
            self._dispatchers.add(task)
            task.add_done_callback(self._dispatchers.discard)
        member = _Member(job, item, loop.create_future(), outputs)
        member.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved if nobody awaits
        group.members.append(member)
        group.outputs += outputs
        if group.outputs >= self.max_batch:
            group.full.set()
        try:
            return await asyncio.shield(member.future)
        except asyncio.CancelledError:
            if member in group.members:  # still waiting: leave the group and the line
                group.members.remove(member)
                group.outputs -= outputs
                self.waiting -= 1
            raise

    async def _dispatch(self, group: "_Group", run_many) -> None:
        """Wait for company and a slot, then run ``group`` in a worker thread and hand out the results."""
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(group.full.wait(), self.batch_wait)
            await self._slots.acquire()
        except asyncio.CancelledError:  # the queue closed
            self._fail(group.members, ShuttingDown("the server is shutting down; retry when it is back"))
            raise
        if self._groups.get(group.key) is group:
            del self._groups[group.key]
        members, group.members = group.members, []  # taken: from here on they are running
        self.waiting -= len(members)
        for member in members:
            if member.job.reason:
                member.future.set_exception(member.job.error())
        live = [m for m in members if not m.job.reason]
        future = None
        if self.closing:
            self._fail(live, ShuttingDown("the server is shutting down; retry when it is back"))
        elif live:
            try:
                future = self._pool.submit(run_many, [m.item for m in live], [m.job for m in live])
            except RuntimeError:  # the pool was closed
                self._fail(live, ShuttingDown("the server is shutting down; retry when it is back"))
        if future is None:
            self._slots.release()
            return
        jobs = [m.job for m in live]
        started = time.perf_counter()
        self.running += len(live)
        self.batches += 1
        self.batched += len(live)
        for job in jobs:
            job.started = True

        def account() -> None:  # the slot stays taken until the worker thread is really done
            elapsed = time.perf_counter() - started
            self.running -= len(live)
            for job in jobs:
                if not job.reason:
                    self.done += 1
                    self._durations.append(elapsed / len(live))
            self._slots.release()

        def finished(_future) -> None:  # in the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
                loop.call_soon_threadsafe(account)

        future.add_done_callback(finished)
        try:
            results = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self._fail(live, ShuttingDown("the server is shutting down; retry when it is back"))
            raise
        except Exception as exc:  # the whole call failed (all cancelled, out of memory, ...)
            results = [exc] * len(live)
        for member, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)

    @staticmethod
    def _fail(members: list["_Member"], error: Exception) -> None:
        for member in members:
            if not member.future.done():
                member.future.set_exception(error)

    def stats(self) -> dict[str, int]:
        return {"running": self.running, "waiting": self.waiting, "max_waiting": self.max_waiting,
                "concurrency": self.concurrency, "done": self.done, "rejected": self.rejected,
                "cancelled": self.cancelled, "timed_out": self.timed_out, "disconnected": self.disconnected,
                "max_batch": self.max_batch, "batches": self.batches, "batched": self.batched}

    def begin_shutdown(self, grace: float = 0.0) -> None:
        """Stop taking edits; cancel waiting ones now and running ones after ``grace`` seconds.

        Safe to call from a signal handler or another thread; a second call cancels everything now.
        """
        if self.closing:
            self._cancel_all()
            return
        self.closing = True
        jobs = list(self.jobs.values())
        running = [j for j in jobs if j.started]
        self.shutdown_report = {"grace": grace, "running": len(running), "cancelled_running": 0,
                                "cancelled_waiting": sum(j.cancel("shutdown") for j in jobs if not j.started)}
        if grace <= 0:
            self._cancel_all()
        else:
            timer = threading.Timer(grace, self._cancel_all)
            timer.daemon = True
            timer.start()

    def _cancel_all(self) -> None:
        for job in list(self.jobs.values()):
            if job.cancel("shutdown") and job.started:
                self.shutdown_report["cancelled_running"] = self.shutdown_report.get("cancelled_running", 0) + 1

    def close(self) -> None:
        self.closing = True
        self._cancel_all()
        for task in list(self._dispatchers):
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Member:
    """One request in a group of :meth:`EditQueue.run_batched`."""

    job: Job
    item: Any
    future: asyncio.Future
    outputs: int


@dataclass
class _Group:
    """Requests of one batch key that will share an editor call."""

    key: Any
    members: list[_Member] = dataclasses.field(default_factory=list)
    outputs: int = 0
    full: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


# ------------------------------------------------------------------------------------------------
# Errors and middleware

#: OpenAI-style error ``type`` by HTTP status, for errors whose class names none.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               499: "cancelled", 504: "timeout"}
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, no spaces: safe to echo in a header


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_code(exc: BaseException) -> str:
    """A stable machine-readable code: the class's ``error_code``, else its name in snake_case."""
    return getattr(exc, "error_code", None) or re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_body(message: str, kind: str, code: str, param: str | None = None) -> bytes:
    """One JSON line in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    text = " ".join(str(message).split()) or kind
    return json.dumps({"error": {"message": text, "type": kind, "param": param, "code": code}}).encode()


async def _send_error(send, status: int, message: str, code: str, headers: dict[str, str] | None = None,
                      param: str | None = None):
    body = error_body(message, error_type(status), code, param)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def request_id(request) -> str:
    """The id :class:`RequestIdMiddleware` gave this request (a fresh one outside it)."""
    return request.scope.get("ip2p.request_id") or new_request_id()


class RequestIdMiddleware:
    """Pure ASGI, outermost: every HTTP request gets an id, the client's ``X-Request-Id`` when it sends
    a usable one, and every answer (errors from the other middleware included) carries it back."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-request-id"), None)
        rid = new_request_id() if given is None else given.strip()
        scope["ip2p.request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = dict(message, headers=[*headers, (b"x-request-id", rid.encode("latin-1"))])
            await send(message)

        if not _REQUEST_ID.fullmatch(rid):
            scope["ip2p.request_id"] = rid = new_request_id()
            return await _send_error(send_with_id, 400, f"{REQUEST_ID_HEADER} must be 1-128 visible ASCII "
                                     "characters without spaces", "invalid_request_id", param=REQUEST_ID_HEADER)
        await self.app(scope, receive, send_with_id)


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI: the API key (every path but /health) and the request size limit (413), for the
    API and the mounted UI alike. Streaming bodies are counted as they arrive, not trusted."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        set_cookie = None
        if self.settings.api_key and scope.get("path") != "/health":
            given, from_query = _given_key(scope, headers)
            if not (given and hmac.compare_digest(given.encode(), self.settings.api_key.encode())):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await _send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                         "(browsers: open /?api_key=KEY once)", "invalid_api_key",
                                         {"WWW-Authenticate": "Bearer"})
            if from_query:  # a browser opened /?api_key=KEY: remember it for the UI's own requests
                set_cookie = f"{KEY_COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict"
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        limit = self.settings.max_request_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_error(send, 413, f"request body too large: limit {limit:,} bytes", "request_too_large")
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if set_cookie:
                    message = dict(message, headers=[*message.get("headers", []),
                                                      (b"set-cookie", set_cookie.encode())])
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, f"request body too large: limit {limit:,} bytes", "request_too_large")


def _given_key(scope, headers: dict[str, str]) -> tuple[str | None, bool]:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if headers.get("x-api-key"):
        return headers["x-api-key"], False
    from urllib.parse import parse_qs

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("api_key"):
        return query["api_key"][0], True
    from http.cookies import SimpleCookie

    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is the same as none
        return None, False
    return (cookie[KEY_COOKIE].value if KEY_COOKIE in cookie else None), False


# ------------------------------------------------------------------------------------------------
# Request parsing (everything validated through EditOptions and ip2p.images)

#: OpenAI request fields that need nothing from us when left at their neutral values.
_OPENAI_IGNORED = ("user", "quality", "input_fidelity", "output_compression", "safety_identifier", "complexity")


def _options(values: dict[str, Any], settings: ServerSettings, recommended: dict | None = None) -> EditOptions:
    """EditOptions from request fields (canonical names or aliases), checked, within server limits;
    fields a request leaves out take the model's ``recommended`` settings (its ip2p.json)."""
    values = dict(values)
    if settings.default_resolution is not None:
        values.setdefault("resolution", settings.default_resolution)
    given = EditOptions.from_mapping(values)
    opts = given.check(recommended, limits={"num_images": settings.max_images, "resolution": settings.max_resolution})
    # the editor fills the left-out fields again and records which came from the model (model_defaults)
    return dataclasses.replace(opts, **{name: None for name in given.unset()})


def _format(value: Any, name: str = "format") -> str:
    fmt = str(value or "png").strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise BadOptions(f"{name} must be one of png, jpeg, webp, got {value!r}", param=name)
    return fmt


async def _json_object(request) -> dict:
    """A JSON request body that must be an object, or a one-line 400."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadOptions("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadOptions("request body must be a JSON object")
    return body


async def _read_form(request):
    try:
        return await request.form(max_files=4, max_fields=64, max_part_size=64 * 1024)
    except Exception as exc:  # starlette raises its own HTTPException / MultiPartException
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise BadOptions(f"malformed multipart body: {detail}") from None


async def _upload_bytes(form, *names: str) -> list[bytes]:
    files = []
    for name in names:
        for value in form.getlist(name):
            if isinstance(value, str):
                raise BadImage(f"field {name!r} must be a file upload, not text", param=name)
            files.append(await value.read())
    return files


def _decode_b64(text: Any, name: str = "image") -> bytes:
    if not isinstance(text, str) or not text:
        raise BadImage(f"'{name}' must be a base64 string (or a data: URL)", param=name)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"'{name}' is not valid base64", param=name) from None


def _is_mask_spec(text: str) -> bool:
    return text.strip().lower() == "auto" or text.strip().lower().startswith("text:")


def _request_mask(mask: Any, size: tuple[int, int], alpha: bool):
    """A request's mask, checked: None, "auto" / "text:PHRASE", or image bytes read as a boolean
    array (native: white = editable; OpenAI: the transparent pixels are)."""
    from .masks import load_mask, mask_from_alpha, parse_mask

    if mask is None or (isinstance(mask, str) and not mask.strip()):
        return None
    try:
        if isinstance(mask, str):
            if not _is_mask_spec(mask):
                raise BadOptions("mask must be an image file, 'auto' or 'text:PHRASE'", param="mask")
            return parse_mask(mask)
        if not isinstance(mask, bytes | bytearray) or not mask:
            raise BadImage("mask must be an image (a file upload, or base64 in JSON)", param="mask")
        return (mask_from_alpha if alpha else load_mask)(bytes(mask), size, "mask")[0]
    except (BadImage, BadOptions) as exc:
        exc.param = "mask"
        raise


def _parse_size(size: Any) -> dict[str, Any]:
    """OpenAI ``size``: ``auto`` keeps the input size; ``WxH`` asks for that long side."""
    if size in (None, "", "auto"):
        return {}
    text = str(size).lower().strip()
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise BadOptions(f"size must be WIDTHxHEIGHT or auto, got {size!r}", param="size")
    return {"resolution": max(int(width), int(height)), "keep_working_size": True}


# ------------------------------------------------------------------------------------------------
# The app


def _edit_schema(openai: bool, recommended: dict | None = None) -> dict[str, Any]:
    """OpenAPI request schemas, built from the option schema (the handlers parse bodies themselves,
    so that every error is one line from EditOptions, not a framework validation dump)."""
    option_props = {o.name: o.schema() for o in OPTIONS if o.name != "num_images"}
    for name, value in (recommended or {}).items():  # the served model's own ip2p.json settings
        option_props[name]["default"] = value
    num_images = BY_NAME["num_images"].schema()
    if openai:
        props = {
            "image": {"type": "string", "format": "binary"},
            "prompt": {"type": "string"},
            "n": num_images,
            "size": {"type": "string", "description": "WIDTHxHEIGHT (long side used) or auto"},
            "response_format": {"type": "string", "enum": ["b64_json"]},
            "output_format": {"type": "string", "enum": list(FORMATS)},
            "model": {"type": "string"},
            **option_props,
        }
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["image", "prompt"], "properties": props}}}}}
    props = {"instruction": {"type": "string"}, "num_images": num_images,
             "format": {"type": "string", "enum": list(FORMATS)}, **option_props}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image", "instruction"],
                                           "properties": {"image": {"type": "string", "format": "binary"}, **props}}},
        "application/json": {"schema": {"type": "object", "required": ["image", "instruction"],
                                        "properties": {"image": {"type": "string", "description": "base64"},
                                                       **props}}}}}}


def _is_path(text: str) -> bool:
    """Whether a model reference names a place on this machine (not a bundled name or a hub id)."""
    return (text.startswith(("/", "~", ".")) or "\\" in text or text.count("/") > 1
            or Path(text).expanduser().exists())


def public_model_id(name: str) -> str:
    """The model as clients see it: a bundled name or hub id as it is; a folder or a checkpoint file
    by its own name (``/data/models/tiny`` -> ``tiny``), so no filesystem path leaves the server."""
    text = str(name)
    if not _is_path(text):
        return text
    path = Path(text).expanduser()
    path = path.resolve() if path.name in ("", ".", "..") else path
    if path.suffix.lower() in (".ckpt", ".safetensors", ".pt", ".pth", ".bin"):
        return path.stem or "model"
    return path.name or "model"


def _path_scrubber(model_id: str, *paths: str):
    """A function replacing the model's paths on this machine with ``model_id`` in a message."""
    hidden = set()
    for text in paths:
        if text and text != model_id and _is_path(text):
            path = Path(text).expanduser()
            hidden.update({text, str(path)})
            with contextlib.suppress(OSError):
                hidden.add(str(path.resolve()))
    ordered = sorted((h for h in hidden if len(h) > 1), key=len, reverse=True)

    def scrub(message: str) -> str:
        for text in ordered:
            message = message.replace(text, model_id)
        return message

    return scrub


#: OpenAPI descriptions of the error answers, each ``{"error": {"message", "type", "param", "code"}}``.
ERROR_WHEN = {
    400: "bad request: no image, not an image, bad base64, an unsupported field, a bad X-Request-Id",
    401: "API key missing or wrong",
    404: "not found: a model that is not served here; for /v1/cancel, no such waiting or running request",
    409: "the request was cancelled (POST /v1/cancel/{id}), or its X-Request-Id is already in use",
    413: "request body or image over the server's limits",
    422: "a bad option value, an unknown option, an empty instruction, malformed JSON",
    429: "queue full; Retry-After says when to retry",
    503: "the device ran out of memory, or the server is shutting down",
    504: "the edit ran past the server's time limit and was stopped",
}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "one line a person can act on"},
        "type": {"type": "string", "description": "invalid_request_error, authentication_error, not_found_error, "
                                                  "conflict_error, cancelled, rate_limit_error, server_error, timeout"},
        "param": {"type": ["string", "null"], "description": "the field at fault, as the request spelled it"},
        "code": {"type": "string", "description": "machine-readable, e.g. bad_options, queue_full, timeout"}}}}}


def _error_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    return {status: {"description": ERROR_WHEN[status], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status in statuses}


#: ``/docs``: the API from /openapi.json, rendered by a few lines of inline script; nothing is
#: fetched from another host (FastAPI's Swagger page loads its scripts from a CDN: blank offline).
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ip2p HTTP API</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.4 }
section { border-top: 1px solid #ccc; padding-top: .5rem; margin-top: 1rem }
table { border-collapse: collapse; width: 100% } td, th { border: 1px solid #ddd; padding: .2rem .4rem; text-align: left; vertical-align: top }
code { background: #f3f3f3; padding: 0 .2rem }
</style></head>
<body>
<h1>ip2p HTTP API</h1>
<p>The machine-readable schema is <a id="schema" href="/openapi.json">/openapi.json</a>.
Every error is one JSON line: <code>{"error": {"message", "type", "param", "code"}}</code>.</p>
<div id="ops">Loading the schema...</div>
<noscript>This page lists the endpoints with a little script; without it, read the schema above.</noscript>
<script>
const OPENAPI = __OPENAPI__;
document.getElementById("schema").href = OPENAPI;
document.getElementById("schema").textContent = OPENAPI;
const esc = (s) => String(s === undefined || s === null ? "" : s).replace(/[&<>"]/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
function fieldRows(schema) {
  const props = (schema && schema.properties) || {};
  const required = (schema && schema.required) || [];
  let rows = "<table><tr><th>field</th><th>type</th><th>default</th><th>about</th></tr>";
  for (const [name, p] of Object.entries(props)) {
    rows += "<tr><td><code>" + esc(name) + "</code>" + (required.includes(name) ? " (required)" : "") + "</td><td>"
      + esc(p.type) + (p.enum ? ": " + esc(p.enum.join(", ")) : "") + "</td><td>" + esc(p.default) + "</td><td>"
      + esc(p.description) + "</td></tr>";
  }
  return rows + "</table>";
}
fetch(OPENAPI, {credentials: "same-origin"}).then((r) => {
  if (!r.ok) throw new Error(r.status + " " + r.statusText);
  return r.json();
}).then((spec) => {
  let out = "<p>" + esc(spec.info && spec.info.description) + "</p>";
  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      out += "<section><h2><code>" + esc(method.toUpperCase()) + " " + esc(path) + "</code></h2><p>"
        + esc(op.summary) + "</p>";
      for (const p of op.parameters || []) {
        out += "<p>" + esc(p.in) + " parameter <code>" + esc(p.name) + "</code>: " + esc(p.description) + "</p>";
      }
      const content = (op.requestBody && op.requestBody.content) || {};
      for (const [type, media] of Object.entries(content)) {
        out += "<h3>Body: " + esc(type) + "</h3>" + fieldRows(media.schema);
      }
      const codes = Object.entries(op.responses || {});
      out += "<h3>Answers</h3><ul>" + codes.map(([code, r]) => "<li><b>" + esc(code) + "</b> "
        + esc(r.description) + "</li>").join("") + "</ul></section>";
    }
  }
  document.getElementById("ops").innerHTML = out;
}).catch((e) => {
  document.getElementById("ops").textContent = "Could not load the schema: " + e.message;
});
</script>
</body></html>
"""


def _install_error_handlers(app, scrub) -> None:
    """Every error as one JSON line in OpenAI's shape: ip2p's own, FastAPI's and Starlette's (404,
    405, validation) and bugs (500, traceback in the log only); ``scrub`` keeps paths out."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error_response(status: int, message: str, code: str, kind: str | None = None, param: str | None = None,
                       headers: dict[str, str] | None = None):
        body = json.loads(error_body(scrub(message), kind or error_type(status), code, param))
        return JSONResponse(body, status_code=status, headers=headers)

    # (No ``from __future__ import annotations`` in this module: FastAPI must see ``Request`` itself.)
    @app.exception_handler(Ip2pError)
    async def _ip2p_error(request, exc: Ip2pError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        return error_response(exc.http_status, str(exc), error_code(exc), getattr(exc, "error_type", None),
                              getattr(exc, "param", None), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        headers = getattr(exc, "headers", None)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return error_response(404, f"no such endpoint: {where}", "unknown_endpoint", headers=headers)
        if exc.status_code == 405:
            allow = (headers or {}).get("Allow", "")
            return error_response(405, f"method not allowed: {where}" + (f"; use {allow}" if allow else ""),
                                  "method_not_allowed", headers=headers)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error_response(exc.status_code, message, "http_error", headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        return error_response(422, f"{'.'.join(loc)}: {first.get('msg', 'invalid request')}", "bad_options",
                              param=loc[-1] if loc else None)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):  # a bug: the log has the traceback, the client a line
        return error_response(500, f"internal server error in request {request_id(request)}; "
                                   "the server's log has the details", "internal_error")


async def supervise_edit(request, job: Job, work):
    """Await ``work`` (a queue.run); cancel the job when its client leaves or its time is up."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if task.done():
                break
            if not job.reason:
                if job.overdue():
                    job.cancel("timeout")
                elif await request.is_disconnected():
                    job.cancel("disconnect")
            if job.reason:  # waiting: it leaves the line; running: the worker stops at its next step
                task.cancel()
                await asyncio.wait({task})
                break
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        job.cancel("shutdown")
        task.cancel()
        raise
    if not task.cancelled():
        exc = task.exception()
        if exc is None:
            return task.result()
        if not (job.reason and isinstance(exc, Cancelled)):
            raise exc
    raise job.error()


def _install_service_routes(app, editor, queue: EditQueue, model_id: str, key_401: tuple) -> None:
    """Everything but the edits: health, the model list, cancelling by request id, the offline
    /docs page, and a JSON 404/405 for any other /v1 path."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse
    from fastapi.routing import APIRoute
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def model_info() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "ip2p"}

    @app.get("/health", summary="liveness, model and queue state (no API key needed)")
    async def health():
        return {"status": "ok", "model": model_id, "device": str(editor.device), "queue": queue.stats()}

    @app.get("/v1/models", summary="the model this server edits with (OpenAI shape)",
             responses=_error_responses(*key_401))
    async def models():
        return {"object": "list", "data": [model_info()]}

    @app.post("/v1/cancel/{request_id:path}", summary="cancel a waiting or running edit by its X-Request-Id",
              responses=_error_responses(*key_401, 404),
              openapi_extra={"parameters": [{"name": "request_id", "in": "path", "required": True,
                                             "schema": {"type": "string"},
                                             "description": "the edit's X-Request-Id"}]})
    async def cancel(request: Request):
        rid = request.path_params["request_id"]
        job = queue.jobs.get(rid)
        if job is None:
            raise UnknownRequest(f"no waiting or running edit has request id {rid!r} (it finished, or never came)",
                                 param="request_id")
        state = "running" if job.started else "waiting"
        job.cancel("cancel")
        return {"id": rid, "object": "edit.cancellation", "cancelled": True, "state": state}

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        schema_url = request.scope.get("root_path", "") + app.openapi_url
        return HTMLResponse(DOCS_PAGE.replace("__OPENAPI__", json.dumps(schema_url).replace("</", "<\\/")))

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, rest: str):
        path = request.scope["path"]
        allowed = sorted({m for r in app.router.routes if isinstance(r, APIRoute) and r.endpoint is not unknown
                          and r.path_regex.match(path) for m in r.methods} - {"HEAD"})
        if allowed:  # the path exists, the method does not (GET /v1/images/edits)
            raise StarletteHTTPException(405, headers={"Allow": ", ".join(allowed)})
        raise StarletteHTTPException(404)


def _install_verify_route(app, settings: ServerSettings, key_401: tuple) -> None:
    """``POST /v1/verify``: :func:`ip2p.provenance.verify` on an uploaded file (multipart ``file``
    or ``image``, or JSON with base64 ``image``), in a worker thread: decoding a large picture's
    watermark takes a while, and the event loop must not wait on it."""
    from fastapi import Request

    from .images import load_image
    from .provenance import verify

    schema = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image to check"}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "description": "base64"}}}}}}}

    @app.post("/v1/verify", summary="watermark, C2PA credentials and ip2p parameters of an image",
              openapi_extra=schema, responses=_error_responses(400, *key_401, 413, 422))
    async def verify_route(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await _json_object(request)
            if "image" not in body:
                raise BadImage("no image: send 'image' as a base64 string", param="image")
            data = _decode_b64(body["image"])
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await _read_form(request)
            files = await _upload_bytes(form, "file", "image")
            if len(files) != 1:
                raise BadImage("send one image as the multipart file field 'file'", param="file")
            data = files[0]
        else:
            raise Unsupported(f"content type {kind or '(none)'!r}: send multipart/form-data or application/json")

        def work():
            load_image(data, max_pixels=settings.max_pixels)  # 400/413 as for an edit
            return verify(data, "upload")

        report = await asyncio.to_thread(work)
        return {"object": "verification", **report}


#: Video request fields that are not edit options (:class:`ip2p.video_edit.VideoOptions`, the range).
_VIDEO_FIELDS = ("consistency", "every", "start", "end", "format")


def _install_video_route(app, editor, queue: EditQueue, settings: ServerSettings, model_id: str,
                         key_401: tuple) -> None:
    """``POST /v1/video``: one instruction over a short video (mp4/webm/mov/mkv, GIF or WebP; multipart
    field ``video``, or JSON with base64 ``video``), through :meth:`ip2p.editor.Editor.edit_video`.
    Frames past ``max_video_frames`` or pixels past ``max_video_pixels`` get 413 before queueing."""
    from fastapi import Request

    schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["video", "instruction"], "properties": {
            "video": {"type": "string", "format": "binary"}, "instruction": {"type": "string"},
            "consistency": {"type": "string", "enum": ["naive", "noise", "attention", "attention+previous", "blend"]},
            "every": {"type": "integer", "minimum": 1}, "start": {"type": "number"}, "end": {"type": "number"},
            "format": {"type": "string", "enum": ["mp4", "webm", "gif", "webp"]},
            **{o.name: o.schema() for o in OPTIONS if o.name != "num_images"}}}}}}}

    @app.post("/v1/video", summary="edit every frame of a short video with one instruction", openapi_extra=schema,
              responses=_error_responses(400, *key_401, 409, 413, 422, 429, 503, 504))
    async def video_edit(request: Request):
        from .video import ReadLimits, Video, read_video, video_bytes
        from .video_edit import VideoOptions

        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            fields = await _json_object(request)
            if "video" not in fields:
                raise BadImage("no video: send 'video' as a base64 string", param="video")
            data = _decode_b64(fields.pop("video"), "video")
        elif kind == "multipart/form-data":
            form = await _read_form(request)
            files = await _upload_bytes(form, "video")
            if len(files) != 1:
                raise BadImage("send one video as the multipart file field 'video'", param="video")
            data, fields = files[0], {k: v for k, v in form.multi_items() if isinstance(v, str)}
        else:
            raise Unsupported(f"content type {kind or '(none)'!r}: send multipart/form-data or application/json")
        instruction = fields.pop("instruction", fields.pop("prompt", None))
        if instruction is None:
            raise BadOptions("instruction is missing: say what to change, for example 'make it winter'",
                             param="instruction")
        check_instruction(instruction)
        extra = {name: fields.pop(name) for name in _VIDEO_FIELDS if name in fields}
        fmt = str(extra.get("format") or "mp4").lower()
        if fmt not in ("mp4", "webm", "gif", "webp"):
            raise BadOptions(f"format must be one of mp4, webm, gif, webp, got {fmt!r}", param="format")
        try:
            every = int(extra.get("every", 1))
            limits = ReadLimits(start=float(extra.get("start", 0)), max_frames=settings.max_video_frames,
                                end=None if extra.get("end") in (None, "") else float(extra["end"]),
                                max_pixels=settings.max_pixels, max_total_pixels=settings.max_video_pixels)
        except (TypeError, ValueError):
            raise BadOptions("every must be an integer and start / end numbers (seconds)") from None
        video_options = VideoOptions.preset(str(extra.get("consistency", "blend")), every=every)
        opts = _options(fields, settings, editor.recommended)
        try:
            source = await asyncio.to_thread(read_video, data, limits, name="video")  # 400/413 before queueing
        except (BadImage, BadOptions) as exc:
            exc.param = getattr(exc, "param", None) or "video"
            raise
        job = Job(request_id(request), settings.time_limit)
        queue.register(job)

        def work():
            job.check()
            result = editor.edit_video(source.frames, instruction, opts, video=video_options, callback=job.check)
            params = {**result.params, "model": model_id}
            edited = Video(result.frames, source.fps, source.durations, source.audio)
            return result, params, base64.b64encode(video_bytes(edited, fmt, params)).decode()

        try:
            result, params, b64 = await supervise_edit(request, job, queue.run(work, job))
        finally:
            queue.unregister(job)
        width, height = result.frames[0].size
        return {"created": int(time.time()), "model": model_id, "params": params, "report": result.report,
                "video": {"b64_json": b64, "format": fmt, "frames": len(result.frames), "fps": float(source.fps),
                          "width": width, "height": height}}


def create_app(editor, settings: ServerSettings | None = None):
    """The FastAPI app serving ``editor``; wrap it in uvicorn (``ip2p serve`` does)."""
    from fastapi import FastAPI, Request

    from .images import encode_image, load_image
    from .provenance import signer_from
    from .version import __version__

    settings = settings or ServerSettings()
    signer = signer_from(settings.c2pa_cert, settings.c2pa_key, env={}, flags=("c2pa_cert", "c2pa_key"))
    queue = EditQueue(settings.concurrency, settings.max_queue, settings.max_batch, settings.batch_wait_ms / 1000)
    model_id = public_model_id(editor.model_name)
    scrub = _path_scrubber(model_id, editor.model_name, getattr(editor.components, "source", ""))
    key_401 = (401,) if settings.api_key else ()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="ip2p", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Instruction-guided image editing (InstructPix2Pix). Every error is one JSON "
                              "line in OpenAI's shape: `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. "
                              "Every answer carries `X-Request-Id` (send your own to choose it); "
                              "`POST /v1/cancel/{id}` stops that edit at its next denoising step.")
    app.state.editor, app.state.queue, app.state.settings = editor, queue, settings
    app.state.model_id = model_id
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so 401 and 413 carry the id too

    _install_error_handlers(app, scrub)

    async def run_edit(request, image_bytes: bytes, instruction: Any, opts: EditOptions, fmt: str,
                       spelled: str = "instruction", mask: Any = None, alpha_mask: bool = False):
        if instruction is None:
            raise BadOptions(f"{spelled} is missing: say what to change, for example 'make it winter'", param=spelled)
        check_instruction(instruction, spelled)
        try:
            image = load_image(image_bytes, max_pixels=settings.max_pixels)  # 400/413 before queueing
        except BadImage as exc:
            exc.param = getattr(exc, "param", None) or "image"
            raise
        mask = _request_mask(mask, image.size, alpha_mask)  # a bad mask is a 400 before queueing too
        key = editor.batch_key(image, opts) if mask is None and queue.max_batch > 1 else None
        job = Job(request_id(request), settings.time_limit)
        queue.register(job)

        def work():
            job.check()
            return finish(editor.edit_with([image], instruction, opts, callback=job.check, mask=mask))

        def finish(result):
            outputs = []
            for picture, params in zip(result.images, result.params, strict=True):
                params = {**params, "model": model_id}  # the model's name, never its path on this machine
                data = encode_image(picture, fmt, params)
                if signer is not None:  # the upload is the ingredient, its own manifest kept
                    data = signer.sign(data, fmt, params, image_bytes, f"output.{fmt}", "input")
                outputs.append((base64.b64encode(data).decode(), params, picture.size))
            return outputs

        waiting = (queue.run(work, job) if key is None else
                   queue.run_batched(key, (image, instruction, opts, finish), job, run_batch, opts.num_images))
        try:
            return await supervise_edit(request, job, waiting)
        finally:
            queue.unregister(job)

    def run_batch(items, jobs: list[Job]) -> list:
        """One editor call for a group of requests (``EditQueue.run_batched``): their results, or the
        exception of one whose output could not be encoded. It stops once every request is cancelled."""
        def check(step: int = 0, total: int = 0) -> None:
            if all(job.reason for job in jobs):
                raise Cancelled(f"requests {', '.join(job.id for job in jobs)} were cancelled")

        check()
        results = editor.edit_batch([item[:3] for item in items], callback=check, batch_size=settings.max_batch,
                                    pad_to=settings.max_batch if settings.exact_batches else None)
        answers: list = []
        for (*_, finish), result in zip(items, results, strict=True):
            try:
                answers.append(finish(result))
            except Exception as exc:  # noqa: BLE001 - that request's own failure, not its neighbours'
                answers.append(exc)
        return answers

    @app.post("/v1/images/edits", summary="OpenAI-compatible image edit", openapi_extra=_edit_schema(True, editor.recommended),
              responses=_error_responses(400, *key_401, 404, 409, 413, 422, 429, 503, 504))
    async def openai_edit(request: Request):
        form = await _read_form(request)
        masks = await _upload_bytes(form, "mask")
        if len(masks) > 1:
            raise Unsupported(f"one mask per request, got {len(masks)}", param="mask")
        images = await _upload_bytes(form, "image", "image[]")
        if not images:
            raise BadImage("no image: send the image as the multipart file field 'image'", param="image")
        if len(images) > 1:
            raise Unsupported(f"one image per request, got {len(images)}", param="image")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if fields.pop("response_format", "b64_json") not in ("b64_json", ""):
            raise Unsupported("response_format 'url' is not supported by this server; use b64_json",
                              param="response_format")
        if parse_bool("stream", fields.pop("stream", "false")):
            raise Unsupported("stream is not supported by this server", param="stream")
        if fields.pop("background", "auto") not in ("auto", "opaque", ""):
            raise Unsupported("background 'transparent' is not supported; InstructPix2Pix outputs RGB",
                              param="background")
        model = fields.pop("model", "")
        if model and model not in (model_id, editor.model_name):
            raise ModelNotFound(f"model {model!r} is not served here; this server has {model_id!r}", param="model")
        for key in _OPENAI_IGNORED:
            fields.pop(key, None)
        prompt = fields.pop("prompt", None)
        fmt = _format(fields.pop("output_format", "png"), "output_format")
        size = fields.pop("size", None)
        fields.update(_parse_size(size))
        try:
            opts = _options(fields, settings, editor.recommended)
        except BadOptions as exc:  # resolution and keep_working_size came from the client's size
            if size not in (None, "", "auto") and getattr(exc, "param", None) in ("resolution", "keep_working_size"):
                exc.param = "size"
            raise
        outputs = await run_edit(request, images[0], prompt, opts, fmt, spelled="prompt",
                                 mask=masks[0] if masks else None, alpha_mask=True)
        width, height = outputs[0][2]
        return {"created": int(time.time()), "data": [{"b64_json": b64, "revised_prompt": None} for b64, _, _ in outputs],
                "output_format": fmt, "size": f"{width}x{height}", "params": [p for _, p, _ in outputs]}

    @app.post("/v1/edit", summary="edit with every ip2p option (multipart, or JSON with base64 image)",
              openapi_extra=_edit_schema(False, editor.recommended),
              responses=_error_responses(400, *key_401, 409, 413, 422, 429, 503, 504))
    async def native_edit(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await _json_object(request)
            if "image" not in body:
                raise BadImage("no image: send 'image' as a base64 string", param="image")
            image = _decode_b64(body.pop("image"))
            mask = body.pop("mask", None)
            if isinstance(mask, str) and not _is_mask_spec(mask):
                mask = _decode_b64(mask, "mask")
            fields = body
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await _read_form(request)
            files = await _upload_bytes(form, "image")
            if not files:
                raise BadImage("no image: send the image as the multipart file field 'image'", param="image")
            if len(files) > 1:
                raise Unsupported(f"one image per request, got {len(files)}", param="image")
            image = files[0]
            mask_files = [v for v in form.getlist("mask") if not isinstance(v, str)]
            if len(form.getlist("mask")) > 1:
                raise Unsupported("one mask per request", param="mask")
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            mask = await mask_files[0].read() if mask_files else fields.pop("mask", None)
        else:
            raise Unsupported(f"content type {kind or '(none)'!r}: send multipart/form-data or application/json")
        spelled = "instruction" if "instruction" in fields or "prompt" not in fields else "prompt"
        instruction = fields.pop("instruction", None)
        if instruction is None:
            instruction = fields.pop("prompt", None)
        fmt = _format(fields.pop("format", "png"))
        opts = _options(fields, settings, editor.recommended)
        outputs = await run_edit(request, image, instruction, opts, fmt, spelled=spelled, mask=mask)
        return {"created": int(time.time()), "model": model_id,
                "images": [{"b64_json": b64, "format": fmt, "params": params} for b64, params, _ in outputs]}

    _install_verify_route(app, settings, key_401)
    _install_video_route(app, editor, queue, settings, model_id, key_401)
    _install_service_routes(app, editor, queue, model_id, key_401)

    if settings.ui:
        from .ui import mount_ui

        app = mount_ui(app, editor, defaults=EditOptions(resolution=settings.default_resolution))
    return app


# ------------------------------------------------------------------------------------------------
# Running


def uvicorn_server(app, *, grace: float | None = None, **config):
    """A uvicorn server for ``app`` that shuts down without hanging on a running edit.

    On SIGTERM or SIGINT it stops accepting (uvicorn), lets running edits go on for ``grace``
    seconds (the app's ``shutdown_grace`` by default), then cancels them at their next denoising
    step; waiting edits are cancelled at once (503). A second signal cancels everything at once.
    It does not re-raise the signal afterwards (uvicorn does), so ``ip2p serve`` prints its line
    and exits 0.
    """
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    state = getattr(app, "state", None)
    queue: EditQueue | None = getattr(state, "queue", None)
    settings: ServerSettings | None = getattr(state, "settings", None)
    if grace is None:
        grace = settings.shutdown_grace if settings is not None else 0.0
    config.setdefault("timeout_graceful_shutdown", max(1, math.ceil(grace) + 5))

    class Server(uvicorn.Server):
        signal_name: str | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            self.signal_name = self.signal_name or signal.Signals(sig).name
            again = self.should_exit
            self.should_exit = True
            if again:
                self.force_exit = True
            if queue is not None:
                queue.begin_shutdown(0 if again else grace)

    return Server(uvicorn.Config(app, **config))


class BackgroundServer:
    """uvicorn in a daemon thread on a free loopback port: for tests, notebooks and benchmarks."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning"):
        self.server = uvicorn_server(app, grace=0, host=host, port=port, log_level=log_level,
                                      access_log=False, lifespan="on")
        self.queue = getattr(getattr(app, "state", None), "queue", None)
        self.thread = threading.Thread(target=self.server.run, name="ip2p-uvicorn", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        if self.queue is not None:
            self.queue.begin_shutdown(0)  # running edits stop at their next step, not after their last
        self.server.should_exit = True
        self.thread.join(timeout=30)


def shutdown_line(signal_name: str, report: dict[str, Any]) -> str:
    """The one line ``ip2p serve`` prints when a signal stopped it."""
    grace = report.get("grace", 0)
    finished = report.get("running", 0) - report.get("cancelled_running", 0)
    return (f"ip2p: {signal_name}: stopped accepting requests; cancelled {report.get('cancelled_running', 0)} "
            f"running and {report.get('cancelled_waiting', 0)} waiting edit(s) ({finished} finished within the "
            f"{grace:g} s grace); worker pool closed; exiting")
