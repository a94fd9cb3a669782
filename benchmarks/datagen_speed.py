"""Pairs per second of the image stage (paired sampling with Prompt-to-Prompt + CLIP scoring).

Random weights, so nothing is downloaded; speed does not depend on the weights' values.

    python benchmarks/datagen_speed.py                                    # tiny models, CPU, 32x32
    python benchmarks/datagen_speed.py --preset sd15 --device cuda        # SD-1.5 shapes, 512², 50 steps

Prints one JSON line: pairs/s for sampling alone and with CLIP scoring.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def sd15_components(device, dtype):
    """SD-1.5's UNet, VAE and CLIP ViT-L text encoder shapes with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ip2p.models import Components
    from ip2p.text import build_clip_tokenizer
    from ip2p.tiny import SD15_SCHEDULER_CONFIG, TINY_WORDS

    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    tokenizer = build_clip_tokenizer(TINY_WORDS.split(), max_length=77)
    components = Components(unet.eval(), vae.eval(), text.eval(), tokenizer, dict(SD15_SCHEDULER_CONFIG), name="sd15-random")
    components.to(device, dtype)
    vae.to(dtype=torch.float32)
    return components


def sd15_clip(device):
    from transformers import CLIPConfig, CLIPModel

    from ip2p.text import build_clip_tokenizer
    from ip2p.tiny import TINY_WORDS

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768)
    return CLIPModel(config).eval().to(device), build_clip_tokenizer(TINY_WORDS.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--pairs", type=int, default=8, help="pairs timed (after one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per UNet call")
    parser.add_argument("--share", default="self")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    args = parser.parse_args()

    from ip2p.datagen.clipfilter import ClipScorer
    from ip2p.datagen.images import ImageOptions, PairRenderer, pair_specs
    from ip2p.datagen.tiny import build_tiny_clip
    from ip2p.models import resolve_device, resolve_dtype
    from ip2p.tiny import build_tiny_components

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.preset == "tiny":
        steps, resolution = args.steps or 10, args.resolution or 32
        components = build_tiny_components(in_channels=4).to(device, dtype)
        clip, tokenizer = build_tiny_clip()
    else:
        steps, resolution = args.steps or 50, args.resolution or 512
        components = sd15_components(device, dtype)
        clip, tokenizer = sd15_clip(device)
    scorer = ClipScorer(clip.to(device), tokenizer)
    options = ImageOptions(samples=args.pairs + args.batch_size, steps=steps, resolution=resolution,
                           batch_size=args.batch_size, share=args.share)
    renderer = PairRenderer(components, options)
    specs = pair_specs(0, options)
    caption, output = "a red circle on a white background", "a blue circle on a white background"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in renderer.render(caption, output, specs[:args.batch_size]):  # warm-up
        pass
    sync()
    render_s = score_s = 0.0
    start = time.perf_counter()
    for _, src, edit in renderer.render(caption, output, specs[args.batch_size:]):
        sync()
        mid = time.perf_counter()
        scorer.score(src, edit, caption, output)
        sync()
        score_s += time.perf_counter() - mid
    total = time.perf_counter() - start
    render_s = total - score_s
    print(json.dumps({
        "preset": args.preset, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "resolution": resolution, "steps": steps, "batch_size": args.batch_size, "pairs": args.pairs,
        "threads": args.threads, "share": args.share,
        "pairs_per_s_sampling": round(args.pairs / render_s, 3),
        "pairs_per_s_with_clip": round(args.pairs / total, 3),
    }))


if __name__ == "__main__":
    main()
