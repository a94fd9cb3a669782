"""``ip2p serve``: an HTTP API over one :class:`~ip2p.editor.Editor` (FastAPI + uvicorn).

Endpoints: ``POST /v1/images/edits`` (the OpenAI images-edit shape, so the ``openai`` client works
against it with ``base_url``), ``POST /v1/edit`` (every :class:`~ip2p.options.EditOptions` field,
multipart or JSON with base64), ``GET /v1/models``, ``GET /health``, OpenAPI at ``/openapi.json`` and
``/docs``, and the web UI at ``/`` unless disabled.

Model work never runs on the event loop: requests wait in a bounded queue and run in a worker
thread pool of ``concurrency`` threads (1 by default: one edit at a time per device). A full queue
answers 429 with ``Retry-After``. Every error is one JSON line, ``{"error": {"message", "type",
"code"}}`` (the OpenAI error shape), with the ``http_status`` of the :class:`~ip2p.errors.Ip2pError`
subclass that was raised. Request bodies over the size limit get 413; with an API key set, every
route but ``/health`` answers 401 without it.
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
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import BadImage, BadOptions, Ip2pError, ModelNotFound
from .options import OPTION_ALIASES, SCHEDULERS, EditOptions

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
    default_resolution: int = 512
    ui: bool = True


class QueueFull(Ip2pError):
    """Too many requests are waiting; the client should retry after ``retry_after`` seconds."""

    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Unsupported(Ip2pError):
    """A request field asks for something this server does not do."""

    http_status = 400


class EditQueue:
    """A bounded wait line in front of a small thread pool that runs the editor."""

    def __init__(self, concurrency: int = 1, max_waiting: int = 64):
        if concurrency < 1 or max_waiting < 0:
            raise BadOptions("concurrency must be >= 1 and the queue size >= 0")
        self.concurrency, self.max_waiting = concurrency, max_waiting
        self.waiting = self.running = self.done = self.rejected = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ip2p-edit")
        self._durations: collections.deque[float] = collections.deque(maxlen=20)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: average edit time x queued work per worker."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * (self.waiting + self.running) / self.concurrency))

    async def run(self, fn):
        """Run ``fn()`` in a worker thread once a slot is free; QueueFull when the line is full."""
        if self.waiting >= self.max_waiting and self._slots.locked():
            self.rejected += 1
            wait = self.retry_after()
            raise QueueFull(f"server busy: {self.running} running and {self.waiting} waiting; retry in {wait} s", wait)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self.running -= 1
            self.done += 1
            self._durations.append(time.perf_counter() - started)
            self._slots.release()

    def stats(self) -> dict[str, int]:
        return {"running": self.running, "waiting": self.waiting, "max_waiting": self.max_waiting,
                "concurrency": self.concurrency, "done": self.done, "rejected": self.rejected}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------
# Errors and middleware


def error_body(message: str, kind: str, status: int) -> bytes:
    text = " ".join(str(message).split()) or kind
    return json.dumps({"error": {"message": text, "type": kind, "code": status}}).encode()


async def _send_error(send, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    body = error_body(message, kind, status)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


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
                                         "(browsers: open /?api_key=KEY once)", "Unauthorized",
                                         {"WWW-Authenticate": "Bearer"})
            if from_query:  # a browser opened /?api_key=KEY: remember it for the UI's own requests
                set_cookie = f"{KEY_COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict"
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        limit = self.settings.max_request_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_error(send, 413, f"request body too large: limit {limit:,} bytes", "RequestTooLarge")
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
                await _send_error(send, 413, f"request body too large: limit {limit:,} bytes", "RequestTooLarge")


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

_OPTION_NAMES = tuple(f for f in EditOptions.__dataclass_fields__ if f != "extra")
#: OpenAI request fields that need nothing from us when left at their neutral values.
_OPENAI_IGNORED = ("user", "quality", "input_fidelity", "output_compression", "safety_identifier", "complexity")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise BadOptions(f"{name} must be true or false, got {value!r}")


def _options(values: dict[str, Any], settings: ServerSettings, recommended: dict | None = None) -> EditOptions:
    """EditOptions from request fields (canonical names or aliases), checked, within server limits;
    fields a request leaves out take the model's ``recommended`` settings (its ip2p.json)."""
    values = dict(values)
    for key in [k for k in values if OPTION_ALIASES.get(k, k) == "keep_working_size"]:
        values[key] = _bool(key, values[key])
    values.setdefault("resolution", settings.default_resolution)
    given = EditOptions.from_mapping(values)
    opts = given.check(recommended)
    if opts.num_images > settings.max_images:
        raise BadOptions(f"num_images (n) must be at most {settings.max_images} on this server, got {opts.num_images}")
    if opts.resolution > settings.max_resolution:
        raise BadOptions(f"resolution must be at most {settings.max_resolution} on this server, got {opts.resolution}")
    # the editor fills the left-out fields again and records which came from the model (model_defaults)
    return dataclasses.replace(opts, **{name: None for name in given.unset()})


def _format(value: Any) -> str:
    fmt = str(value or "png").strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise BadOptions(f"format must be one of png, jpeg, webp, got {value!r}")
    return fmt


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
                raise BadImage(f"field {name!r} must be a file upload, not text")
            files.append(await value.read())
    return files


def _decode_b64(text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise BadImage("'image' must be a base64 string (or a data: URL)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("'image' is not valid base64") from None


def _parse_size(size: Any) -> dict[str, Any]:
    """OpenAI ``size``: ``auto`` keeps the input size; ``WxH`` asks for that long side."""
    if size in (None, "", "auto"):
        return {}
    text = str(size).lower().strip()
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise BadOptions(f"size must be WIDTHxHEIGHT or auto, got {size!r}")
    return {"resolution": max(int(width), int(height)), "keep_working_size": True}


# ------------------------------------------------------------------------------------------------
# The app


def _edit_schema(openai: bool) -> dict[str, Any]:
    """OpenAPI request schemas, written out because the handlers parse bodies themselves (so that
    every error is one line from EditOptions, not a framework validation dump)."""
    defaults = EditOptions().check()  # the served model's ip2p.json, when it has one, comes first
    option_props = {
        "steps": {"type": "integer", "default": defaults.steps},
        "guidance_scale": {"type": "number", "default": defaults.guidance_scale,
                           "description": "text guidance s_T ('how much to change'); alias text_cfg"},
        "image_guidance_scale": {"type": "number", "default": defaults.image_guidance_scale,
                                 "description": "image guidance s_I ('how close to the original'); alias image_cfg"},
        "seed": {"type": "integer", "description": "default: random, returned in params"},
        "scheduler": {"type": "string", "enum": list(SCHEDULERS), "default": defaults.scheduler},
        "negative_prompt": {"type": "string"},
        "resolution": {"type": "integer", "description": "long side of the working size"},
        "align": {"type": "integer", "enum": [8, 64]},
        "keep_working_size": {"type": "boolean"},
    }
    if openai:
        props = {
            "image": {"type": "string", "format": "binary"},
            "prompt": {"type": "string"},
            "n": {"type": "integer", "default": 1},
            "size": {"type": "string", "description": "WIDTHxHEIGHT (long side used) or auto"},
            "response_format": {"type": "string", "enum": ["b64_json"]},
            "output_format": {"type": "string", "enum": list(FORMATS)},
            "model": {"type": "string"},
            **option_props,
        }
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["image", "prompt"], "properties": props}}}}}
    props = {"instruction": {"type": "string"}, "num_images": {"type": "integer", "default": 1},
             "format": {"type": "string", "enum": list(FORMATS)}, **option_props}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image", "instruction"],
                                           "properties": {"image": {"type": "string", "format": "binary"}, **props}}},
        "application/json": {"schema": {"type": "object", "required": ["image", "instruction"],
                                        "properties": {"image": {"type": "string", "description": "base64"},
                                                       **props}}}}}}


def create_app(editor, settings: ServerSettings | None = None):
    """The FastAPI app serving ``editor``; wrap it in uvicorn (``ip2p serve`` does)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__
    from .images import encode_image, load_image

    settings = settings or ServerSettings()
    queue = EditQueue(settings.concurrency, settings.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="ip2p", version=__version__, lifespan=lifespan,
                  description="Instruction-guided image editing (InstructPix2Pix). Every error is one JSON "
                              "line: `{\"error\": {\"message\", \"type\", \"code\"}}`.")
    app.state.editor, app.state.queue, app.state.settings = editor, queue, settings
    app.add_middleware(GuardMiddleware, settings=settings)

    # (No ``from __future__ import annotations`` in this module: FastAPI must see ``Request`` itself.)
    @app.exception_handler(Ip2pError)
    async def _ip2p_error(request, exc: Ip2pError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        return JSONResponse(json.loads(error_body(str(exc), type(exc).__name__, exc.http_status)),
                            status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse(json.loads(error_body(message, "HTTPError", exc.status_code)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(json.loads(error_body(f"{where}: {first.get('msg', 'invalid request')}",
                                                  "BadOptions", 422)), status_code=422)

    def model_info() -> dict[str, Any]:
        return {"id": editor.model_name, "object": "model", "created": 0, "owned_by": "ip2p"}

    async def run_edit(image_bytes: bytes, instruction: Any, opts: EditOptions, fmt: str):
        if not isinstance(instruction, str) or not instruction.strip():
            raise BadOptions("the instruction (prompt) is missing or empty")
        image = load_image(image_bytes, max_pixels=settings.max_pixels)  # 400/413 before queueing

        def work():
            result = editor.edit_with([image], instruction, opts)
            return [(base64.b64encode(encode_image(p, fmt, params)).decode(), params, p.size)
                    for p, params in zip(result.images, result.params, strict=True)]

        return await queue.run(work)

    @app.get("/health", summary="liveness, model and queue state (no API key needed)")
    async def health():
        return {"status": "ok", "model": editor.model_name, "device": str(editor.device), "queue": queue.stats()}

    @app.get("/v1/models", summary="the model this server edits with (OpenAI shape)")
    async def models():
        return {"object": "list", "data": [model_info()]}

    @app.post("/v1/images/edits", summary="OpenAI-compatible image edit", openapi_extra=_edit_schema(True))
    async def openai_edit(request: Request):
        form = await _read_form(request)
        if form.getlist("mask"):
            raise Unsupported("mask is not supported: InstructPix2Pix edits the whole image from the prompt")
        images = await _upload_bytes(form, "image", "image[]")
        if not images:
            raise BadImage("no image: send the image as the multipart file field 'image'")
        if len(images) > 1:
            raise Unsupported(f"one image per request, got {len(images)}")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if fields.pop("response_format", "b64_json") not in ("b64_json", ""):
            raise Unsupported("response_format 'url' is not supported by this server; use b64_json")
        if _bool("stream", fields.pop("stream", "false")):
            raise Unsupported("stream is not supported by this server")
        if fields.pop("background", "auto") not in ("auto", "opaque", ""):
            raise Unsupported("background 'transparent' is not supported; InstructPix2Pix outputs RGB")
        model = fields.pop("model", "")
        if model and model != editor.model_name:
            raise ModelNotFound(f"model {model!r} is not served here; this server has {editor.model_name!r}")
        for key in _OPENAI_IGNORED:
            fields.pop(key, None)
        prompt = fields.pop("prompt", None)
        fmt = _format(fields.pop("output_format", "png"))
        fields.update(_parse_size(fields.pop("size", None)))
        opts = _options(fields, settings, editor.recommended)
        outputs = await run_edit(images[0], prompt, opts, fmt)
        width, height = outputs[0][2]
        return {"created": int(time.time()), "data": [{"b64_json": b64, "revised_prompt": None} for b64, _, _ in outputs],
                "output_format": fmt, "size": f"{width}x{height}", "params": [p for _, p, _ in outputs]}

    @app.post("/v1/edit", summary="edit with every ip2p option (multipart, or JSON with base64 image)",
              openapi_extra=_edit_schema(False))
    async def native_edit(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise BadOptions("request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise BadOptions("request body must be a JSON object")
            if "image" not in body:
                raise BadImage("no image: send 'image' as a base64 string")
            image = _decode_b64(body.pop("image"))
            fields = body
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await _read_form(request)
            files = await _upload_bytes(form, "image")
            if not files:
                raise BadImage("no image: send the image as the multipart file field 'image'")
            if len(files) > 1:
                raise Unsupported(f"one image per request, got {len(files)}")
            image = files[0]
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        else:
            raise Unsupported(f"content type {kind or '(none)'!r}: send multipart/form-data or application/json")
        instruction = fields.pop("instruction", None)
        if instruction is None:
            instruction = fields.pop("prompt", None)
        fmt = _format(fields.pop("format", "png"))
        opts = _options(fields, settings, editor.recommended)
        outputs = await run_edit(image, instruction, opts, fmt)
        return {"created": int(time.time()), "model": editor.model_name,
                "images": [{"b64_json": b64, "format": fmt, "params": params} for b64, params, _ in outputs]}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, rest: str):
        raise StarletteHTTPException(404)

    if settings.ui:
        from .ui import mount_ui

        app = mount_ui(app, editor, defaults=EditOptions(resolution=settings.default_resolution))
    return app


# ------------------------------------------------------------------------------------------------
# Running


class BackgroundServer:
    """uvicorn in a daemon thread on a free loopback port: for tests, notebooks and benchmarks."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    access_log=False, lifespan="on"))
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
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run(args) -> int:
    from .commands import load_editor_for

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    settings = ServerSettings(api_key=api_key, concurrency=args.concurrency, max_queue=args.max_queue,
                              max_request_bytes=int(args.max_request_mb * 2**20), max_images=args.max_images,
                              max_resolution=args.max_resolution, ui=not args.no_ui)
    if settings.concurrency < 1 or settings.max_queue < 0 or settings.max_request_bytes < 1024:
        raise BadOptions("--concurrency must be >= 1, --max-queue >= 0 and --max-request-mb at least 0.001")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"ip2p: warning: listening on {args.host} without an API key; anyone who can reach it can use it",
              file=sys.stderr)
    args.quiet = getattr(args, "quiet", False)
    editor = load_editor_for(args)
    from .ui import natural_resolution

    settings.default_resolution = args.resolution or natural_resolution(editor)
    app = create_app(editor, settings)
    import uvicorn

    print(f"ip2p: serving {editor.model_name} on http://{args.host}:{args.port} "
          f"(API docs /docs{', UI /' if settings.ui else ''})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.log_level == "info")
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API (OpenAI-compatible /v1/images/edits) and web UI",
                       description="Serve the editor over HTTP: POST /v1/images/edits (OpenAI images API), "
                                   "POST /v1/edit (all options), GET /v1/models, GET /health, docs at /docs, "
                                   "and the web UI at / (unless --no-ui).")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=None, help=f"require this key on every route but /health (or set {API_KEY_ENV})")
    p.add_argument("--no-ui", action="store_true", help="API only, no web UI at /")
    p.add_argument("--concurrency", type=int, default=1, help="editor calls at once (default 1 per device)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 429 (default 64)")
    p.add_argument("--max-request-mb", type=float, default=20.0, help="request body limit in MiB (default 20)")
    p.add_argument("--max-images", type=int, default=4, help="most output images per request (default 4)")
    p.add_argument("--max-resolution", type=int, default=1024, help="largest working resolution a request may ask")
    p.add_argument("--resolution", type=int, default=None, help="working resolution when a request gives none (default: the model's own, 512 for SD)")
    p.add_argument("--model", default=None, help="bundled name, diffusers folder, single file or hub id")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
