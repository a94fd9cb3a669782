"""``ip2p datagen``: text, finetune-text, images and export sub-commands (argument handling only)."""

from __future__ import annotations

import importlib
import json
import sys

from ..errors import BadOptions, first_line


def register(subparsers) -> None:
    parser = subparsers.add_parser("datagen", help="generate InstructPix2Pix training data (text, then images)",
                                   description="Generate training data the way the paper did: a language "
                                   "model writes edits, Stable Diffusion + Prompt-to-Prompt renders pairs, "
                                   "CLIP filters them.")
    sub = parser.add_subparsers(dest="datagen_command", metavar="STAGE", parser_class=type(parser))
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])

    p = sub.add_parser("text", help="captions -> prompts.jsonl (caption, edit, output)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", help="captions file: .txt (one per line), .jsonl or .parquet")
    src.add_argument("--hf-dataset", help="a Hugging Face dataset (cached hub id or local folder)")
    src.add_argument("--shapes", type=int, metavar="N",
                     help="no captions: N exact triples from the synthetic shapes world")
    p.add_argument("--column", help="caption column (default: caption, input, text or prompt)")
    p.add_argument("--split", default="train", help="dataset split for --hf-dataset (default train)")
    p.add_argument("--limit", type=int, help="use only the first N captions")
    p.add_argument("--out", required=True, help="output prompts jsonl")
    p.add_argument("--backend", choices=("hf", "openai", "template"), default="template")
    p.add_argument("--model", help="hf: causal LM folder or cached hub id; openai: the model name")
    p.add_argument("--endpoint", help="openai: API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api", choices=("completions", "chat"), default="completions")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--retries", type=int, default=3, help="re-ask a malformed completion this many times")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocklist", help="file of blocked words/phrases, one per line")
    p.add_argument("--moderation", metavar="MODULE:FUNC",
                   help="a callable taking an EditRecord and returning True to keep it")
    p.add_argument("--no-dedupe", action="store_true", help="keep duplicate (caption, edit) pairs")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_text)

    p = sub.add_parser("finetune-text", help="fine-tune a causal LM on human-written edit examples")
    p.add_argument("--model", required=True, help="base causal LM folder or cached hub id")
    p.add_argument("--examples", required=True, help="jsonl of caption/edit/output (or prompt/completion)")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_finetune)

    p = sub.add_parser("images", help="prompts.jsonl -> CLIP-filtered image pairs (original layout)")
    p.add_argument("--prompts", required=True)
    p.add_argument("--model", required=True, help="SD-1.x text-to-image diffusers folder or cached hub id")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP model folder or cached hub id")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--samples", type=int, default=100, help="pairs generated per prompt (default 100)")
    p.add_argument("--keep", type=int, default=4, help="best pairs kept per prompt (default 4)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--p-min", type=float, default=0.1)
    p.add_argument("--p-max", type=float, default=0.9)
    p.add_argument("--cfg-min", type=float, default=7.5)
    p.add_argument("--cfg-max", type=float, default=15.0)
    p.add_argument("--share", choices=("self", "cross", "both", "none"), default="self",
                   help="which attention maps the edited branch takes from the source branch")
    p.add_argument("--clip-threshold", type=float, default=0.2)
    p.add_argument("--dir-threshold", type=float, default=0.2)
    p.add_argument("--image-threshold", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=4, help="pairs per UNet call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--partition", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread prompts over a Ray cluster (no ADDRESS: start a local one)")
    p.add_argument("--workers", type=int, help="Ray actors (default: one per GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.set_defaults(func=run_images_cmd)

    p = sub.add_parser("export", help="rewrite seeds.json and export a data set folder to HF parquet")
    p.add_argument("--dir", required=True, help="output folder of `datagen images`")
    p.add_argument("--out", help="parquet file to write (omit to only rewrite seeds.json)")
    p.set_defaults(func=run_export)


def _load_moderation(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise BadOptions(f"--moderation must be MODULE:FUNCTION, got {spec!r}")
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise BadOptions(f"cannot import moderation hook {spec!r}: {exc}") from None
    if not callable(func):
        raise BadOptions(f"moderation hook {spec!r} is not callable")
    return func


def run_text(args) -> int:
    from tqdm import tqdm

    from ..datagen.backends import make_backend
    from ..datagen.text import (
        TextOptions,
        generate_text,
        read_blocklist,
        read_captions,
        read_hf_captions,
        write_prompts,
    )

    if args.shapes is not None:
        from ..datagen.backends import shapes_prompts

        records = shapes_prompts(args.shapes, seed=args.seed)
        write_prompts(records, args.out)
        print(f"wrote {len(records)} shapes-world prompts to {args.out}", file=sys.stderr)
        return 0
    if args.captions:
        captions = read_captions(args.captions, args.column, args.limit)
    else:
        captions = read_hf_captions(args.hf_dataset, args.column, args.split, args.limit)
    options = TextOptions(temperature=args.temperature, max_tokens=args.max_tokens, retries=args.retries,
                          seed=args.seed, batch_size=args.batch_size, dedupe=not args.no_dedupe,
                          blocklist=read_blocklist(args.blocklist) if args.blocklist else (),
                          moderation=_load_moderation(args.moderation) if args.moderation else None).check()
    backend = make_backend(args.backend, model=args.model, endpoint=args.endpoint, api=args.api,
                           temperature=args.temperature, max_tokens=args.max_tokens, device=args.device)
    with tqdm(total=len(captions), desc="captions", unit="cap", file=sys.stderr, disable=None) as bar:
        records, stats = generate_text(captions, backend, options, callback=lambda d, t: bar.update(d - bar.n))
    write_prompts(records, args.out)
    print(f"wrote {len(records)} prompts to {args.out} ({json.dumps(vars(stats))})", file=sys.stderr)
    return 0


def run_finetune(args) -> int:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..datagen.finetune import FinetuneOptions, finetune_text, read_examples
    from ..errors import ModelNotFound
    from ..models import resolve_device

    examples = read_examples(args.examples)
    options = FinetuneOptions(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                              seed=args.seed).check()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).to(resolve_device(args.device))
    except OSError as exc:
        raise ModelNotFound(f"language model {args.model!r} not found locally: {first_line(exc, 200)}") from None
    with tqdm(desc="fine-tune", unit="step", file=sys.stderr, disable=None) as bar:
        def step(i, total, loss):
            bar.total = total
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        losses = finetune_text(model, tokenizer, examples, options, callback=step)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"fine-tuned on {len(examples)} examples, {len(losses)} steps, last loss {losses[-1]:.4f}; "
          f"saved to {args.out}", file=sys.stderr)
    return 0


def run_images_cmd(args) -> int:
    from tqdm import tqdm

    from ..datagen.clipfilter import FilterOptions
    from ..datagen.images import ImageOptions
    from ..datagen.pipeline import shard
    from ..datagen.text import read_prompts

    prompts = read_prompts(args.prompts)
    if args.limit is not None:
        prompts = prompts[:args.limit]
    options = ImageOptions(samples=args.samples, steps=args.steps, resolution=args.resolution, p_min=args.p_min,
                           p_max=args.p_max, cfg_min=args.cfg_min, cfg_max=args.cfg_max, share=args.share,
                           batch_size=args.batch_size, seed=args.seed, jpeg_quality=args.jpeg_quality).check()
    filters = FilterOptions(args.clip_threshold, args.dir_threshold, args.image_threshold, args.keep).check()
    indices = shard(len(prompts), args.partitions, args.partition)
    if args.ray:
        from ..datagen.distributed import run_images_ray

        summary = run_images_ray(args.prompts, args.out, args.model, args.clip, indices, options, filters,
                                 address=None if args.ray == "local" else args.ray, workers=args.workers,
                                 device=args.device, dtype=args.dtype)
    else:
        from ..datagen.clipfilter import ClipScorer
        from ..datagen.images import PairRenderer, load_t2i
        from ..datagen.pipeline import run_images

        renderer = PairRenderer(load_t2i(args.model, args.device, args.dtype), options)
        scorer = ClipScorer.load(args.clip, device=args.device)
        with tqdm(total=len(indices) * options.samples, desc="pairs", unit="pair", file=sys.stderr,
                  disable=None) as bar:
            def progress(event, info):
                if event == "pair":
                    bar.update(1)

            summary = run_images(prompts, args.out, renderer, scorer, filters, indices=indices, progress=progress)
    print(f"{summary.prompts} prompts done ({summary.skipped} already done), {summary.pairs_generated} pairs "
          f"generated, {summary.pairs_kept} kept in {args.out}", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from pathlib import Path

    from ..datagen.store import PairStore, export_parquet
    from ..errors import BadData

    if not Path(args.dir).is_dir():
        raise BadData(f"{args.dir} is not a folder")
    PairStore(args.dir).write_seeds()
    if args.out:
        rows = export_parquet(args.dir, args.out)
        print(f"exported {rows} pairs to {args.out}", file=sys.stderr)
    return 0
