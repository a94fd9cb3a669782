"""Two model classes stock diffusers lacks, used by the bundled demo model.

* :class:`PixelUnshuffleAutoencoder`: an exact autoencoder. Space-to-depth with factor f turns
  3 x H x W pixels into 3f^2 x H/f x W/f latents and back with no error, so the preservation
  floor a learned VAE leaves (8/255 for the last demo VAE) is 0 and there is no VAE stage to train.
  It keeps the interface the pipelines use: ``encode(x).latent_dist.mode()``, ``decode(z).sample``,
  a ``block_out_channels`` of f's log2 + 1 entries (so diffusers derives the scale factor f),
  ``latent_channels`` and ``scaling_factor``.
* :class:`ResidualUNet2DConditionModel`: a UNet whose output is its own plus the image-latent half
  of its input. Trained with x0 prediction (``prediction_type="sample"``)
  it predicts the edited latent as the input latent plus a change, so it keeps the input from the
  first step; its ``conv_out`` starts at zero (set by the trainer).

Both are diffusers ``ModelMixin``/``ConfigMixin`` classes: ``save_pretrained``/``from_pretrained``
work on their folders, and stock diffusers runs a model made of them when they are passed in::

    from diffusers import StableDiffusionInstructPix2PixPipeline
    from ip2p.architectures import PixelUnshuffleAutoencoder, ResidualUNet2DConditionModel
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, vae=PixelUnshuffleAutoencoder.from_pretrained(folder, subfolder="vae"),
        unet=ResidualUNet2DConditionModel.from_pretrained(folder, subfolder="unet"))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class ExactLatent:
    """The "posterior" of an exact encoder: a point mass, so mode, mean and every sample agree."""

    def __init__(self, latents: torch.Tensor):
        self.mean = latents
        self.std = torch.zeros_like(latents)
        self.logvar = torch.full_like(latents, -math.inf)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator=None) -> torch.Tensor:
        return self.mean


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    """Space-to-depth "autoencoder": ``latents = pixel_unshuffle(x, f)``, exactly invertible."""

    @register_to_config
    def __init__(self, in_channels: int = 3, factor: int = 4, latent_channels: int | None = None,
                 block_out_channels: tuple[int, ...] | None = None, scaling_factor: float = 1.0,
                 sample_size: int = 64):
        super().__init__()
        levels = int(math.log2(factor))
        if 2 ** levels != factor:
            raise ValueError(f"factor must be a power of two, got {factor}")
        expected = in_channels * factor * factor
        if latent_channels not in (None, expected):
            raise ValueError(f"latent_channels must be {expected} for {in_channels} channels at factor {factor}")
        # diffusers derives the pipeline's scale factor as 2 ** (len(block_out_channels) - 1)
        self.register_to_config(latent_channels=expected,
                                block_out_channels=list(block_out_channels or [expected] * (levels + 1)))
        self.register_buffer("anchor", torch.zeros(1))  # gives the module a dtype and a device

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latent = ExactLatent(F.pixel_unshuffle(x.to(self.anchor.dtype), self.config.factor))
        return AutoencoderKLOutput(latent_dist=latent) if return_dict else (latent,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        pixels = F.pixel_shuffle(z.to(self.anchor.dtype), self.config.factor)
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True, **_):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)


class ResidualUNet2DConditionModel(UNet2DConditionModel):
    """``UNet(x) + x[:, C:2C]``: the output is a change to the input-image latent.

    With x0 prediction this is the edited latent as "input plus edit". The sampler concatenates the
    unscaled image latent while x0 lives in the scaled space, so the residual is only meaningful
    with a VAE whose ``scaling_factor`` is 1 (the exact autoencoder); the trainer checks that.
    """

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                return_dict: bool = True, **kwargs):
        out = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        out = add_residual(self, out, sample)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


def add_residual(unet, out: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """``out`` plus the image-latent half of ``sample`` for a residual UNet; ``out`` for any other.
    Paths that run the UNet's blocks themselves (DeepCache in ip2p.fast) call this too."""
    if not isinstance(unet, ResidualUNet2DConditionModel):
        return out
    c = unet.config.out_channels
    return out + sample[:, c:2 * c]


#: The classes a model folder's configs may name (``_class_name``), by name.
UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, ResidualUNet2DConditionModel)}
VAE_CLASSES = {cls.__name__: cls for cls in (AutoencoderKL, PixelUnshuffleAutoencoder)}
