"""``ip2p train`` (train from a YAML config, with a tqdm bar) and ``ip2p train export``."""

from __future__ import annotations

import sys

from .common import add_threads_option


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune an InstructPix2Pix model from a YAML config",
                              description="Train an InstructPix2Pix model (see docs/training.md). "
                                          "`ip2p train export CHECKPOINT OUT_DIR` exports a checkpoint.")
    p.add_argument("--config", help="YAML training config (sections model, vae, data, optim, run)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from its latest checkpoint")
    p.add_argument("--max-steps", type=int, help="override run.max_steps")
    p.add_argument("--output", help="override run.output_dir")
    p.add_argument("--data", help="override data.path (the same recipe on another folder of triplets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_option(p)
    p.set_defaults(func=run)
    sub = p.add_subparsers(dest="train_command", metavar="export", parser_class=type(p))
    e = sub.add_parser("export", help="export a checkpoint's EMA weights as a diffusers model folder",
                       description="Write CHECKPOINT's EMA weights (trained weights when it has none) as a "
                                   "diffusers InstructPix2Pix folder, with its ip2p.json edit settings.")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's checkpoints/step-N folder")
    e.add_argument("out", metavar="OUT_DIR", help="the model folder to write")
    e.set_defaults(func=run_export)


def run_export(args) -> int:
    from ..train import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {path}")
    return 0


def run(args) -> int:
    from ..errors import BadOptions

    if not args.config:
        raise BadOptions("give --config FILE.yaml (see configs/ for examples)")
    from ..train import TrainConfig, train

    config = TrainConfig.from_yaml(args.config)
    if args.max_steps is not None:
        config.run.max_steps = args.max_steps
    if args.output:
        config.run.output_dir = args.output
    if args.data:
        config.data.path = args.data
    bar = _Progress(enabled=not args.no_progress)
    try:
        result = train(config, resume=args.resume, callback=bar)
    finally:
        bar.close()
    print(f"trained {result.steps} steps; model: {result.model_dir}; run folder: {result.output_dir}"
          + (f"; {result.bad_samples} bad samples skipped" if result.bad_samples else ""))
    return 0


class _Progress:
    """A tqdm bar per stage (ETA included) on stderr; warnings and checkpoints as lines above it."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "stage" and not event.total:
            self._line(event.message)
            return
        if event.kind == "stage" or (event.kind == "step" and self.bar is None):
            self.close()
            if self.enabled:
                self.bar = tqdm(total=event.total, initial=event.step, desc=event.stage, unit="step",
                                file=sys.stderr, dynamic_ncols=True)
            return
        if event.kind == "step" and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        elif event.kind in ("warning", "checkpoint", "validation"):
            self._line(event.message if event.kind == "warning" else f"{event.kind} at step {event.step}: {event.path}")

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"ip2p: {text}", file=sys.stderr)
        else:
            print(f"ip2p: {text}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
