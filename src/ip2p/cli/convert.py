"""``ip2p convert``: between original single-file checkpoints and diffusers folders."""

from __future__ import annotations

import json
from typing import Any

from ..convert import DEFAULT_HINTS
from ..errors import BadOptions
from ..models import convert_model


def parse_hint(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise BadOptions(f"--hint {text!r}: expected KEY=VALUE, e.g. attention_head_dim=8")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def run_convert(args) -> int:
    hints = dict(parse_hint(h) for h in args.hint or ())
    if args.no_ema:
        hints["ema"] = False
    print(convert_model(args.source, args.target, tokenizer=args.tokenizer, hints=hints or None))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert between original single-file checkpoints and diffusers folders",
        description="Convert SOURCE (an original .ckpt/.safetensors InstructPix2Pix checkpoint, a diffusers "
                    "folder, a cached hub id or a bundled name) to TARGET: a .safetensors/.ckpt single file "
                    "in the original LDM layout, or otherwise a diffusers folder. Pickle .ckpt files that "
                    "would run code are refused.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--tokenizer", metavar="DIR", help="CLIP tokenizer folder, for a text encoder with a "
                                                       "non-standard vocabulary")
    p.add_argument("--hint", action="append", metavar="KEY=VALUE",
                   help=f"architecture numbers the weights cannot tell ({', '.join(DEFAULT_HINTS)})")
    p.add_argument("--no-ema", action="store_true", help="use the trained weights even when EMA weights exist")
    p.set_defaults(func=run_convert)
