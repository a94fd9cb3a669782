"""``ip2p verify FILE...``: what each file says about where it came from (the work is
:func:`ip2p.provenance.verify`): the invisible watermark, the C2PA manifest, the ip2p parameters,
and with ``--model`` whether replaying the edit reproduces the pixels.

Exit code: 0 when every file was checked and nothing contradicts itself; 1 when some file has an
invalid manifest, a watermark whose edit id does not match its parameters, or a replay that
differs; 2 when a file cannot be read (one line each on stderr) or a flag is wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import BadImage, Ip2pError
from .common import add_threads_option


def _read(name: str) -> bytes:
    path = Path(name)
    if not path.is_file():
        raise BadImage(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadImage(f"{name}: cannot read it ({exc.strerror or exc})") from None


def contradicts(report: dict) -> bool:
    """Whether a report shows tampering: a broken manifest, a mismatched mark, a differing replay."""
    c2pa, mark = report["c2pa"], report["watermark"]
    replay = report["params"].get("replay") or {}
    return ((c2pa["present"] and not c2pa["valid"]) or mark.get("matches_params") is False
            or (replay.get("checked") and not replay.get("reproduced")))


def run(args) -> int:
    from ..provenance import format_report, verify

    anchors = _read(args.trust_anchors) if args.trust_anchors else None
    editor = None
    if args.model is not None:
        from ..editor import Editor

        editor = Editor.load(args.model, device=args.device, dtype=args.dtype)
    reports, failed = [], False
    for name in args.files:
        try:
            reports.append(verify(_read(name), name, trust_anchors=anchors, editor=editor, source=args.input,
                                  threads=args.threads))
        except Ip2pError as exc:
            failed = True
            print(f"ip2p: error: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_report(r) for r in reports))
    if failed:
        return 2
    return 1 if any(contradicts(r) for r in reports) else 0


def register(sub) -> None:
    p = sub.add_parser("verify", help="check a file's watermark, C2PA credentials and edit parameters",
                       description="Report, for each FILE, the invisible watermark (found or not, its payload), "
                                   "the C2PA manifest (valid or not, signer, actions, ingredients) and the ip2p "
                                   "parameters (and, with --model, whether replaying the edit reproduces the "
                                   "pixels). Exit 0: all checked and consistent; 1: some file shows tampering; "
                                   "2: a file could not be read.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--trust-anchors", metavar="PEM", help="root certificates to trust (otherwise every signer is "
                                                          "reported as untrusted, its signature still checked)")
    g = p.add_argument_group("replay (optional)")
    g.add_argument("--model", default=None, help="replay each edit with this model and compare the pixels")
    g.add_argument("--input", default=None, help="the input image to replay from (default: the recorded path)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    add_threads_option(g)  # default for a replay: the edit's recorded cpu_threads (docs/provenance.md)
    p.set_defaults(func=run)
