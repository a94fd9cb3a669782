"""Tiny InstructPix2Pix models with random weights, built in-process.

The test suite, the benchmarks and every surface's tests use these instead of downloading
anything. They have the real architecture (8-channel UNet with cross-attention, KL VAE, CLIP text
encoder, CLIP tokenizer, SD-1.5 scheduler config) at toy widths, so that every code path (loading,
conversion, sampling, training) runs for real in seconds on a CPU.
"""

from __future__ import annotations

import torch

from .components import SD15_SCHEDULER_CONFIG, Components

#: The scheduler configuration SD-1.5 and timbrooks/instruct-pix2pix ship.
#: Words the tiny tokenizer knows as whole tokens (others fall back to bytes).
TINY_WORDS = (
    "make turn the it a an into to of and circle square triangle star heart red green blue yellow "
    "white black orange purple pink background remove add move left right up down bigger smaller "
    "winter night cat tiger dog"
)


def build_tiny_components(
    seed: int = 0,
    in_channels: int = 8,
    prediction_type: str = "epsilon",
    sample_size: int = 32,
) -> Components:
    """A random InstructPix2Pix (or, with ``in_channels=4``, text-to-image) model at toy size.

    Widths are multiples of 32 (GroupNorm groups) and the block layout mirrors SD-1.5
    (cross-attention blocks, then a plain block) so the model also round-trips through the
    original LDM single-file layout.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .text import build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size // 2,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=sample_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    tokenizer = build_clip_tokenizer(TINY_WORDS.split(), max_length=77)
    # The tokenizer's vocabulary must fit the embedding table.
    assert len(tokenizer) <= text_encoder.config.vocab_size
    scheduler_config = dict(SD15_SCHEDULER_CONFIG, prediction_type=prediction_type)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        name=f"tiny-{seed}",
        source="in-process",
    )


def gradient_image(width: int = 32, height: int = 32, seed: int = 0):
    """A deterministic colourful test picture: gradients plus seeded noise, so every pixel differs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                     (x + y) * 127 / max(width + height, 1)], -1)
    base += rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
