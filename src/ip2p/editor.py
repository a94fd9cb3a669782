"""``Editor``: the one editing core every surface calls.

It glues model loading (:mod:`ip2p.models`), image handling (:mod:`ip2p.images`) and the
dual-guidance sampler (:mod:`ip2p.sampler`). Work that does not change between images is done
once: the instruction and negative prompt are encoded once per call (and cached across calls),
each input image is VAE-encoded once, and images of the same working size run as one batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .components import Components
from .errors import BadOptions, Ip2pError, OutOfMemory
from .models import load_components
from .options import REPLAYED, EditOptions, check_instruction
from .sampler import Conditioning, Runner, denoise
from .version import __version__

ProgressCallback = Callable[[int, int], None]


@dataclass
class EditResult:
    """Edited images and, for each, the exact parameters that reproduce it."""

    images: list[Image.Image]
    params: list[dict[str, Any]] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        return self.images[0]


def pixel_digest(image: Image.Image) -> str:
    """A short hash of an image's RGB pixels: lets a replay check it got the same input."""
    data = np.asarray(image.convert("RGB"))
    return hashlib.sha256(data.tobytes() + str(data.shape).encode()).hexdigest()[:16]


class Editor:
    """An InstructPix2Pix model on one device, ready to edit.

    Thread-safe: concurrent calls are serialised on the model (one device does one edit at a
    time; batching, not threads, is how to go faster).
    """

    def __init__(self, components: Components, *, runner: Runner | None = None, text_cache_size: int = 32):
        self.components = components
        #: what an edit calls (UNet, decoder, schedulers): the default mode's, or a speed mode's
        self.runner = runner or Runner.default(components)
        self._lock = threading.RLock()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size
        self.stats = {"text_encodes": 0, "image_encodes": 0, "unet_batches": 0}

    @classmethod
    def load(cls, model=None, device="auto", dtype="auto", mode: str = "default") -> Editor:
        """Load ``model``; ``mode`` is default, fast, low-memory or approx (see :mod:`ip2p.fast`)."""
        from .fast import check_mode, make_runner

        mode = check_mode(mode)
        quiet_libraries()
        components = load_components(model, device=device, dtype=dtype)
        return cls(components, runner=make_runner(components, mode))

    # ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.components.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.unet.dtype

    @property
    def model_name(self) -> str:
        return self.components.name

    @property
    def recommended(self) -> dict[str, Any]:
        """The model's recommended steps / scales / scheduler (its folder's ip2p.json), maybe empty."""
        return self.components.extra.get("recommended", {})

    @property
    def native_resolution(self) -> int:
        """The image size the model was trained at (UNet sample size times the VAE factor)."""
        from .models import native_resolution

        return native_resolution(self.components.unet.config, self.components.vae.config)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.components.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_instruction(self, text: str) -> torch.Tensor:
        """CLIP text embedding (1, seq, dim) of ``text``, cached by exact string."""
        with self._lock:
            hit = self._text_cache.get(text)
            if hit is not None:
                self._text_cache.move_to_end(text)
                return hit
            tok, encoder = self.components.tokenizer, self.components.text_encoder
            # diffusers pads to model_max_length; a tokenizer saved without one reports ~1e30
            length = min(tok.model_max_length, encoder.config.max_position_embeddings)
            ids = tok([text], padding="max_length", max_length=length, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):
                mask = (ids != tok.pad_token_id).long()
            embeds = encoder(ids, attention_mask=mask)[0].to(self.dtype)
            self.stats["text_encodes"] += 1
            self._text_cache[text] = embeds
            while len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)
            return embeds

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unscaled VAE posterior modes of same-sized RGB images: the model's image condition."""
        # uint8 crosses to the device (a quarter of the bytes); the same float32 arithmetic follows there.
        array = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).to(self.device)
        pixels = (array.permute(0, 3, 1, 2).float() / 255.0).to(self.dtype) * 2.0 - 1.0
        self.stats["image_encodes"] += len(images)
        return self.components.vae.encode(pixels).latent_dist.mode()

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.components.vae
        decode = self.runner.decode
        pixels = decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        self.runner.after_edit(tuple(latents.shape))
        pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
        array = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(a) for a in array]

    # ---------------------------------------------------------------------------------------
    def edit(self, image, instruction: str, *, callback: ProgressCallback | None = None, batch_size: int = 4,
             **options: Any) -> EditResult:
        """Edit one image (PIL, path, bytes or array) or a list of them with one instruction.

        ``options`` are :data:`ip2p.options.OPTIONS` by name or alias (``steps``, ``guidance_scale``,
        ``image_guidance_scale``, ``seed``, ``scheduler``, ``negative_prompt``, ``num_images``,
        ``resolution``, ``align``, ``keep_working_size``). Returns every output image with its
        parameters; output ``i`` used seed ``seed + i``. Steps, scales and scheduler left out take the
        model's recommendation (:attr:`recommended`).
        """
        images = list(image) if isinstance(image, list | tuple) else [image]
        return self.edit_with(images, instruction, EditOptions.from_mapping(options), callback=callback,
                              batch_size=batch_size)

    def edit_with(
        self,
        images: Sequence[Any],
        instruction: str,
        options: EditOptions,
        *,
        callback: ProgressCallback | None = None,
        batch_size: int = 4,
        input_names: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> EditResult:
        """Edit ``images`` with validated ``options``; see :meth:`edit`.

        ``seeds``, when given, holds one seed per output (input-major, ``num_images`` per input) and
        replaces ``options.seed + i``: a batch job can then run many (image, seed) pairs as one batch.
        """
        from .images import load_image, restore_size, to_working

        check_instruction(instruction)
        if not images:
            raise BadOptions("no image given")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadOptions(f"batch_size must be a positive integer, got {batch_size!r}")
        from_model = [name for name in options.unset() if name in self.recommended]
        opts = options.check(self.recommended)
        if opts.resolution is None:
            opts = dataclasses.replace(opts, resolution=self.native_resolution)
        align = max(opts.align, self.vae_scale_factor)
        sources = [load_image(im) for im in images]
        working = [to_working(im, opts.resolution, align) for im in sources]

        # Output k of input j is row j * num_images + k; it uses seed + that index.
        jobs = [(j, k) for j in range(len(sources)) for k in range(opts.num_images)]
        if seeds is None:
            seeds = [opts.seed + i for i in range(len(jobs))]
        elif len(seeds) != len(jobs) or not all(isinstance(x, int) and 0 <= x < 2**63 for x in seeds):
            raise BadOptions(f"seeds must be {len(jobs)} integers in [0, 2**63), one per output")
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, (j, _) in enumerate(jobs):
            by_size.setdefault(working[j].size, []).append(index)
        chunks = [idx[i:i + batch_size] for idx in by_size.values() for i in range(0, len(idx), batch_size)]

        total_steps = len(chunks) * opts.steps
        done = 0

        def on_step(step: int, total: int) -> None:
            if callback is not None:
                callback(done + step, total_steps)

        outputs: list[Image.Image | None] = [None] * len(jobs)
        with self._lock:
            text = self.encode_instruction(instruction)
            uncond = self.encode_instruction(opts.negative_prompt)
            for chunk in chunks:
                inputs = [jobs[i][0] for i in chunk]
                unique = sorted(set(inputs))
                latents = self._guard(self.encode_images, [working[j] for j in unique])
                rows = torch.stack([latents[unique.index(j)] for j in inputs])
                generators = [torch.Generator("cpu").manual_seed(seeds[i]) for i in chunk]
                result = self._guard(self._sample, Conditioning(text, uncond, rows), opts, generators, on_step)
                for i, picture in zip(chunk, self.decode_latents(result), strict=True):
                    outputs[i] = picture
                done += opts.steps

        params = []
        final: list[Image.Image] = []
        for index, (j, _k) in enumerate(jobs):
            picture = outputs[index]
            assert picture is not None
            if not opts.keep_working_size and picture.size != sources[j].size:
                picture = restore_size(picture, sources[j].size)
            final.append(picture)
            params.append(self._params(instruction, opts, seeds[index], sources[j], picture, working[j],
                                       input_names[j] if input_names else None))
            if from_model:
                params[-1]["model_defaults"] = from_model
        return EditResult(final, params)

    # ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _sample(self, cond: Conditioning, opts: EditOptions, generators, on_step) -> torch.Tensor:
        self.stats["unet_batches"] += 1
        return denoise(
            self.runner.unet_for_edit(),
            self.runner.make_scheduler(opts.scheduler, self.components.scheduler_config),
            cond,
            steps=opts.steps,
            text_scale=opts.guidance_scale,
            image_scale=opts.image_guidance_scale,
            generators=generators,
            latent_channels=self.components.vae.config.latent_channels,
            callback=on_step,
        )

    def _guard(self, fn, *args):
        """Run ``fn`` turning device out-of-memory into a one-line :class:`OutOfMemory`."""
        try:
            return fn(*args)
        except Ip2pError:
            raise
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(
                f"out of memory on {self.device}: use a lower --resolution, fewer --num-images or a smaller "
                "--batch-size"
            ) from None

    def _params(self, instruction, opts: EditOptions, seed, source, picture, working, name) -> dict[str, Any]:
        """What an output records: every replayed option (:data:`~ip2p.options.REPLAYED`), then sizes,
        model and provenance of the input."""
        params = {"instruction": instruction, **{key: getattr(opts, key) for key in REPLAYED}, "seed": seed}
        params.update({
            "width": picture.size[0],
            "height": picture.size[1],
            "working_width": working.size[0],
            "working_height": working.size[1],
            "model": self.model_name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "input_sha256": pixel_digest(source),
            "ip2p_version": __version__,
        })
        if name:
            params["input"] = name
        if self.runner.mode != "default":
            params["mode"] = self.runner.mode  # "approx" output differs from the default mode's
        return params


def quiet_libraries() -> None:
    """Library progress bars and info logs are noise on a user's terminal; errors still show."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # logging tweaks are cosmetic
        pass
