"""Model classes stock diffusers lacks, used by the bundled demo model.

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
* :class:`ImageStemUNet2DConditionModel`: the residual UNet whose ``conv_in`` also runs a small
  convolution stack on the input image's own pixels (:class:`ImageStemConv`). Over pixel-unshuffled
  latents a UNet convolution sees each f x f patch flattened into channels, so an edge or a corner
  must be learnt once for every offset inside a patch; the stem's pixel convolutions learn it once.
  A linear probe of run 13's demo UNet read colour from its 16x16 features at 100 % and an object's
  kind at 14-33 % (chance 17 %; docs/demo-model.md), and shape words are what it failed to ground.
* :class:`KindStemUNet2DConditionModel`: the image-stem UNet whose ``conv_in`` also adds a frozen
  :class:`KindBranch`, trained before the UNet on kind maps, that says what shape each latent pixel
  shows, so the cross-attention's queries can match "the circle" (run 18).

All are diffusers ``ModelMixin``/``ConfigMixin`` classes: ``save_pretrained``/``from_pretrained``
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
from torch import nn

from .shapes.scene import KINDS


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


class ImageStemConv(nn.Conv2d):
    """``conv_in`` plus a stem on the pixels of the input-image half of its input.

    The image latent (channels C:2C of the UNet's input) is pixel-shuffled back to 3 x H x W, run
    through 3x3 convolutions at full resolution and at each halving down to the latent's (16 channels
    wide, then 32), and projected by a 1x1 convolution onto ``conv_in``'s output channels. That last
    projection starts at zero, so a UNet given the stem computes exactly what it did without it.
    An nn.Conv2d itself, so ``conv_in.weight`` keeps its name and every path that calls
    ``unet.conv_in`` (DeepCache in ip2p.fast) runs the stem too.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int,
                 latent_channels: int, factor: int, width: int = 16):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.latent_channels, self.factor = latent_channels, factor
        layers: list[nn.Module] = [nn.Conv2d(latent_channels // factor ** 2, width, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv2d(width, min(2 * width, 32), 3, stride=2, padding=1), nn.SiLU()]
            width = min(2 * width, 32)
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, out_channels, 1)]
        self.stem = nn.Sequential(*layers)
        nn.init.zeros_(self.stem[-1].weight)
        nn.init.zeros_(self.stem[-1].bias)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The input image's pixels, from the image-latent half of the UNet's input."""
        c = self.latent_channels
        return F.pixel_shuffle(x[:, c:2 * c], self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.stem(self.pixels(x))


#: Classes of the kind branch: the background and each kind of the shapes world (shapes.render.kind_map).
KIND_CLASSES = 1 + len(KINDS)


class KindBranch(nn.Module):
    """Pixels -> (features, class logits) at 1/f resolution: what each latent pixel shows.

    The layers of ``benchmarks/kind_stem_probe.py``: 3x3 convolutions at full resolution, a stride-2
    one per halving, four more at the latent's, then a 1x1 classifier. Trained alone on kind maps it
    reads an object's kind right 96.7 % of the time after 192,000 samples (docs/demo-model.md, run 17),
    while the same layers inside the UNet, pulled by the denoising loss too, stayed at chance.
    """

    def __init__(self, factor: int, width: int = 32, classes: int = KIND_CLASSES):
        super().__init__()
        first = min(width, 16)
        layers: list[nn.Module] = [nn.Conv2d(3, first, 3, padding=1), nn.SiLU()]
        channels = first
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU()]
            channels = width
        for _ in range(4):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.classify = nn.Conv2d(width, classes, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(pixels)
        return features, self.classify(features)


class KindStemConv(ImageStemConv):
    """An :class:`ImageStemConv` that also adds a :class:`KindBranch`'s features and class shares.

    The branch is trained before the UNet, alone, on kind maps (``model.kind_stem``) and then frozen;
    its output enters through a 1x1 projection that starts at zero, so the grown UNet first computes
    exactly what it did without it. ``kind_steps`` records how many steps the branch was trained.
    """

    def __init__(self, *args, width: int = 32, classes: int = KIND_CLASSES, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds = KindBranch(self.factor, width, classes)
        self.kind_proj = nn.Conv2d(width + classes, self.out_channels, 1)
        nn.init.zeros_(self.kind_proj.weight)
        nn.init.zeros_(self.kind_proj.bias)
        self.register_buffer("kind_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.pixels(x)
        features, logits = self.kinds(pixels)
        prior = self.kind_proj(torch.cat([features, logits.softmax(dim=1)], dim=1))
        return nn.Conv2d.forward(self, x) + self.stem(pixels) + prior


class ImageStemUNet2DConditionModel(ResidualUNet2DConditionModel):
    """A residual UNet whose ``conv_in`` is an :class:`ImageStemConv` (see the module docstring).

    Its config is the UNet's own: the stem's shape follows from it (``out_channels`` = 3 f^2 over an
    exact autoencoder of factor f), so stock diffusers loads the folder with this class passed in.
    """

    stem_class = ImageStemConv

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        old, c = self.conv_in, self.config.out_channels
        factor = math.isqrt(c // 3)
        if 3 * factor * factor != c or 2 * c != self.config.in_channels:
            raise ValueError(f"an image stem needs 3 f^2 latent channels in and out (exact autoencoder), "
                             f"got in {self.config.in_channels}, out {c}")
        self.conv_in = self.stem_class(old.in_channels, old.out_channels, old.kernel_size[0], old.padding[0], c, factor)
        self.conv_in.load_state_dict(old.state_dict(), strict=False)

    # diffusers reads a model's config keys off its __init__ signature: this class takes the UNet's
    __init__.__wrapped__ = UNet2DConditionModel.__init__


class KindStemUNet2DConditionModel(ImageStemUNet2DConditionModel):
    """An image-stem UNet whose ``conv_in`` is a :class:`KindStemConv`: a frozen branch that knows
    what shape each latent pixel shows feeds the features the cross-attention queries are made of,
    so "the circle" has something to match (docs/demo-model.md, run 18)."""

    stem_class = KindStemConv


#: The classes a model folder's configs may name (``_class_name``), by name.
UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, ResidualUNet2DConditionModel,
                                               ImageStemUNet2DConditionModel, KindStemUNet2DConditionModel)}
VAE_CLASSES = {cls.__name__: cls for cls in (AutoencoderKL, PixelUnshuffleAutoencoder)}
