"""Option groups every command shares: the edit options (built from :data:`ip2p.options.OPTIONS`),
the model options, threads and the progress bar."""

from __future__ import annotations

import argparse
import sys

from ..errors import BadOptions
from ..options import MODES, OPTIONS, EditOptions


def add_edit_options(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                     helps: dict[str, str] | None = None) -> None:
    """One flag per editing option (kebab-case; see :data:`~ip2p.options.OPTIONS`), all defaulting
    to None so that "not given" is visible; ``only`` limits them to some names, ``helps`` replaces
    the help of some (a command whose default differs says so)."""
    g = p.add_argument_group("edit options")
    for option in OPTIONS:
        if only is not None and option.name not in only:
            continue
        flags = (option.flag, *option.flag_aliases)
        text = (helps or {}).get(option.name, option.help)
        if option.kind is bool:  # a flag turns a switch away from its default (--no-watermark)
            action = "store_false" if option.default is True else "store_true"
            g.add_argument(*flags, dest=option.name, action=action, default=None, help=text)
            continue
        kind = {int: int, float: float}.get(option.kind, str)
        g.add_argument(*flags, dest=option.name, type=kind, default=None, help=text,
                       choices=option.choices if option.kind is int and option.choices else None)


def add_mask_options(p: argparse.ArgumentParser) -> None:
    """``--mask`` and ``--segmenter`` (see :mod:`ip2p.masks`); the mask knobs are edit options."""
    g = p.add_argument_group("mask")
    g.add_argument("--mask", default=None, help="where the edit may act: a mask image (white = editable; outside it "
                                                "the input's pixels are kept exactly), 'auto' (from where a first "
                                                "pass changed the picture) or 'text:PHRASE' (a segmenter's mask)")
    g.add_argument("--segmenter", default=None, help="CLIPSeg hub id or folder for --mask text:... "
                                                     "(default CIDAS/clipseg-rd64-refined, downloaded by you)")


def add_model_options(p: argparse.ArgumentParser, modes: bool = True) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--mode`` and ``--threads``: the same for every command
    that loads a model."""
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, help="bundled name, diffusers folder, single file or hub id "
                                                 "(default: the full model if cached, else the bundled demo)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    m.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    if modes:
        m.add_argument("--mode", default="default", choices=MODES,
                       help="fast: compiled, exact (first use per size compiles); low-memory: VAE tiling and "
                            "offload; approx: DeepCache feature reuse, faster but changes pixels")
        m.add_argument("--low-memory", dest="mode", action="store_const", const="low-memory",
                       help="same as --mode low-memory")
    add_threads_option(m)


def add_threads_option(parser) -> None:
    """``--threads N`` for a heavy CPU command; :func:`apply_threads` checks and applies it."""
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; on a busy machine, "
                                                    "for example beside a training run, fewer are often faster)")


def apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise BadOptions(f"--threads must be at least 1, got {threads}", param="--threads")
    import torch

    torch.set_num_threads(threads)


def options_from_args(args, base: dict | None = None) -> EditOptions:
    """EditOptions from parsed flags; flags the user gave override ``base`` (e.g. a replay). Errors
    name the flag (``--text-cfg must be between 0 and 50``)."""
    values = dict(base or {})
    spelled = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is not None:
            values[option.name] = value
            spelled[option.name] = option.flag
    return EditOptions.from_mapping(values, spelled=spelled)


def load_editor_for(args):
    """Load the model the flags name, saying on stderr which one when it was not named."""
    from ..editor import Editor
    from ..models import default_model, describe_default

    model = args.model
    if model is None:
        model = default_model()
        if not getattr(args, "quiet", False):
            print(describe_default(model), file=sys.stderr)
    return Editor.load(model, device=args.device, dtype=args.dtype, mode=getattr(args, "mode", "default"))


class ProgressBar:
    """A tqdm bar on stderr fed by the editor's step callback; silent when not wanted.

    The bar starts at the first tick it is given (``initial``), so its rate is measured between
    ticks, not from a bar created a microsecond earlier.
    """

    def __init__(self, enabled: bool, desc: str = "editing", unit: str = "step"):
        self.bar = None
        self.enabled = enabled and sys.stderr.isatty()
        self.desc, self.unit = desc, unit

    def __call__(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, desc=self.desc, unit=self.unit, file=sys.stderr,
                            leave=False, dynamic_ncols=True)
            return
        self.bar.total = total
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_c2pa_options(p: argparse.ArgumentParser) -> None:
    """``--c2pa-cert`` and ``--c2pa-key``: sign outputs with C2PA content credentials (docs/provenance.md)."""
    g = p.add_argument_group("content credentials (C2PA)")
    g.add_argument("--c2pa-cert", metavar="CERT", help="PEM certificate chain (signing certificate first, then its "
                                                       "intermediates); default $IP2P_C2PA_CERT; none: nothing signed")
    g.add_argument("--c2pa-key", metavar="KEY", help="PEM private key of that certificate (default $IP2P_C2PA_KEY)")


def signer_for(args):
    """The checked C2PA signer the flags (or environment) name, or None: checked before any model work."""
    from ..provenance import signer_from

    return signer_from(getattr(args, "c2pa_cert", None), getattr(args, "c2pa_key", None))
