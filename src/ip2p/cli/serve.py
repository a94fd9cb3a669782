"""``ip2p serve``: the HTTP API and the web UI (the work is :mod:`ip2p.server`)."""

from __future__ import annotations

import os
import sys

from ..errors import BadOptions
from ..server import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    EditQueue,
    ServerSettings,
    create_app,
    shutdown_line,
    uvicorn_server,
)
from .common import add_c2pa_options, add_model_options, load_editor_for


def run(args) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    time_limit = getattr(args, "time_limit", 600.0)
    grace = getattr(args, "shutdown_grace", 5.0)
    settings = ServerSettings(api_key=api_key, concurrency=args.concurrency, max_queue=args.max_queue,
                              max_request_bytes=int(args.max_request_mb * 2**20), max_images=args.max_images,
                              max_resolution=args.max_resolution, ui=not args.no_ui,
                              max_video_frames=args.max_video_frames,
                              time_limit=time_limit or None, shutdown_grace=grace,
                              max_batch=getattr(args, "max_batch", 1), batch_wait_ms=getattr(args, "batch_wait_ms", 10.0),
                              exact_batches=getattr(args, "exact_batches", False))
    if settings.max_video_frames < 1:
        raise BadOptions(f"--max-video-frames must be at least 1, got {settings.max_video_frames}",
                         param="--max-video-frames")
    if settings.max_batch < 1:
        raise BadOptions(f"--max-batch must be at least 1 (1: no request batching), got {settings.max_batch}",
                         param="--max-batch")
    if not (0 <= settings.batch_wait_ms <= 10_000):
        raise BadOptions(f"--batch-wait-ms must be between 0 and 10000, got {settings.batch_wait_ms}",
                         param="--batch-wait-ms")
    from ..provenance import CERT_ENV, KEY_ENV, signer_from

    settings.c2pa_cert = args.c2pa_cert or os.environ.get(CERT_ENV) or None
    settings.c2pa_key = args.c2pa_key or os.environ.get(KEY_ENV) or None
    signer_from(settings.c2pa_cert, settings.c2pa_key, env={})  # a bad certificate fails before the model loads
    if settings.concurrency < 1 or settings.max_queue < 0 or settings.max_request_bytes < 1024:
        raise BadOptions("--concurrency must be >= 1, --max-queue >= 0 and --max-request-mb at least 0.001")
    if time_limit is not None and not (0 <= time_limit < float("inf")):
        raise BadOptions(f"--time-limit must be a number of seconds >= 0 (0: no limit), got {time_limit}",
                         param="--time-limit")
    if not (0 <= grace < float("inf")):
        raise BadOptions(f"--shutdown-grace must be a number of seconds >= 0, got {grace}", param="--shutdown-grace")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"ip2p: warning: listening on {args.host} without an API key; anyone who can reach it can use it",
              file=sys.stderr)
    args.quiet = getattr(args, "quiet", False)
    editor = load_editor_for(args)
    settings.default_resolution = args.resolution  # None: the model's native size, as in the CLI and UI
    app = create_app(editor, settings)
    server = uvicorn_server(app, host=args.host, port=args.port, log_level=args.log_level,
                             access_log=args.log_level == "info")
    print(f"ip2p: serving {editor.model_name} on http://{args.host}:{args.port} "
          f"(API docs /docs{', UI /' if settings.ui else ''})", file=sys.stderr, flush=True)
    server.run()
    queue: EditQueue = app.state.queue
    queue.close()  # the lifespan closed it already, unless a second signal forced the exit
    if server.signal_name:
        print(shutdown_line(server.signal_name, queue.shutdown_report), file=sys.stderr, flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API (OpenAI-compatible /v1/images/edits) and web UI",
                       description="Serve the editor over HTTP: POST /v1/images/edits (OpenAI images API), "
                                   "POST /v1/edit (all options), POST /v1/cancel/ID, GET /v1/models, GET /health, "
                                   "docs at /docs, and the web UI at / (unless --no-ui). SIGTERM or Ctrl-C stops "
                                   "accepting, cancels the running edits after --shutdown-grace and exits.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=None, help=f"require this key on every route but /health (or set {API_KEY_ENV})")
    p.add_argument("--no-ui", action="store_true", help="API only, no web UI at /")
    p.add_argument("--concurrency", type=int, default=1, help="editor calls at once (default 1 per device)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="request batching: unmasked requests with the same working size, steps, scheduler and "
                        "scales share one UNet batch of up to N output images (default 1: off; try 8 on a GPU)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, metavar="MS",
                   help="how long a request waits for others to share its batch when the device is idle "
                        "(default 10)")
    p.add_argument("--exact-batches", action="store_true",
                   help="run every shared batch at --max-batch images, padded, so that no result's bits depend on "
                        "what it was batched with (without it: float rounding, at most 1/255 in a few pixels); "
                        "costs the padding when batches are not full")
    p.add_argument("--max-request-mb", type=float, default=20.0, help="request body limit in MiB (default 20)")
    p.add_argument("--max-images", type=int, default=4, help="most output images per request (default 4)")
    p.add_argument("--max-video-frames", type=int, default=48,
                   help="most frames of a video POST /v1/video (and the UI's Video tab) takes (default 48)")
    p.add_argument("--max-resolution", type=int, default=1024, help="largest working resolution a request may ask")
    p.add_argument("--resolution", type=int, default=None, help="working resolution when a request gives none (default: the model's own, 512 for SD)")
    p.add_argument("--time-limit", type=float, default=600.0, metavar="SECONDS",
                   help="most seconds a request may take once read, waiting included; past it the edit is "
                        "stopped and the answer is 504 (default 600; 0: no limit)")
    p.add_argument("--shutdown-grace", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long running edits may go on before they are cancelled (default 5)")
    add_model_options(p)
    add_c2pa_options(p)
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
