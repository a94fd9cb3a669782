"""``ip2p ui``: the Gradio web UI on its own (``ip2p serve`` mounts the same UI beside the API)."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading

from ..ui import DEFAULT_PORT, build_ui, require_gradio, theme
from .common import (
    add_c2pa_options,
    add_edit_options,
    add_model_options,
    load_editor_for,
    options_from_args,
    signer_for,
)

#: Edit options whose flags set the UI controls' starting values.
STARTING_VALUES = ("steps", "guidance_scale", "image_guidance_scale", "scheduler", "negative_prompt", "resolution",
                   "watermark")


def run(args) -> int:
    require_gradio()  # a missing Gradio is reported before the model loads
    args.quiet = False
    signer = signer_for(args)  # a bad certificate fails before the model loads
    editor = load_editor_for(args)
    given = options_from_args(args)  # the controls' starting values (resolution None: the model's own)
    defaults = dataclasses.replace(given.check(editor.recommended), seed=None)
    demo = build_ui(editor, defaults, signer=signer)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ip2p: warning: the UI listens on {args.host}; anyone who can reach it can use it", file=sys.stderr)
    # Ctrl-C and SIGTERM only set a flag: raised as KeyboardInterrupt inside launch(), a signal that came
    # while Gradio was still starting up could be swallowed there and leave the UI running.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"ip2p: UI for {editor.model_name} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=False, theme=theme(), footer_links=[],
                    show_error=True, quiet=True, prevent_thread_lock=True)
        while not stop.wait(0.2):
            pass
    finally:
        demo.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("ip2p: UI stopped", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("ui", help="web UI in the browser (Gradio)",
                       description="Start the web UI: upload a picture, write what to change, compare before/after.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    add_model_options(p)
    add_edit_options(p, only=STARTING_VALUES)
    add_c2pa_options(p)
    p.set_defaults(func=run)
