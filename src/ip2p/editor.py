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
from .options import MASK_OPTIONS, REPLAYED, EditOptions, check_instruction
from .provenance import mark_output
from .sampler import Conditioning, LatentBlend, Runner, denoise
from .version import __version__

ProgressCallback = Callable[[int, int], None]
#: ``preview(step, total, images)``: decoded estimates of the outputs being made (working size).
PreviewCallback = Callable[[int, int, list[Image.Image]], None]


@dataclass
class EditResult:
    """Edited images and, for each, the exact parameters that reproduce it."""

    images: list[Image.Image]
    params: list[dict[str, Any]] = field(default_factory=list)
    #: per output, the mask it was limited to (at the input's size; True = editable), or None
    masks: list[np.ndarray | None] = field(default_factory=list)

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
    def decode_latents(self, latents: torch.Tensor, *, final: bool = True) -> list[Image.Image]:
        """Latents to pictures; ``final`` False for a preview (a compiling mode keeps no cache of it)."""
        vae = self.components.vae
        decode = self.runner.decode
        pixels = decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        if final:
            self.runner.after_edit(tuple(latents.shape))
        pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
        array = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(a) for a in array]

    # ---------------------------------------------------------------------------------------
    def edit(self, image, instruction: str, *, callback: ProgressCallback | None = None, batch_size: int = 4,
             mask: Any = None, preview: PreviewCallback | None = None, preview_every: int = 5,
             segmenter: Any = None, **options: Any) -> EditResult:
        """Edit one image (PIL, path, bytes or array) or a list of them with one instruction.

        ``options`` are :data:`ip2p.options.OPTIONS` by name or alias (``steps``, ``guidance_scale``,
        ``image_guidance_scale``, ``seed``, ``scheduler``, ``negative_prompt``, ``num_images``,
        ``resolution``, ``align``, ``keep_working_size``, the ``mask_*`` knobs). Returns every output
        image with its parameters; output ``i`` used seed ``seed + i``. Steps, scales and scheduler
        left out take the model's recommendation (:attr:`recommended`).

        ``mask`` (white = editable; one for all images or a list, one per image) limits the edit:
        outside it the output keeps the input's pixels exactly (:mod:`ip2p.masks`). ``"auto"`` makes
        it from a first unmasked pass, ``"text:PHRASE"`` from a segmenter (``segmenter``: a CLIPSeg id,
        folder or :class:`~ip2p.masks.TextSegmenter`). ``preview`` receives decoded estimates every
        ``preview_every`` steps.
        """
        images = list(image) if isinstance(image, list | tuple) else [image]
        return self.edit_with(images, instruction, EditOptions.from_mapping(options), callback=callback,
                              batch_size=batch_size, mask=mask, preview=preview, preview_every=preview_every,
                              segmenter=segmenter)

    def edit_video(self, frames, instruction: str, options: EditOptions | None = None, *, video: Any = None,
                   work_dir=None, progress: ProgressCallback | None = None,
                   callback: ProgressCallback | None = None, **option_values: Any):
        """Edit a video's frames (PIL images, or a path / bytes :func:`ip2p.video.read_video` reads)
        with one instruction, tying the frames together; see :mod:`ip2p.video_edit`.

        ``video``: a :class:`~ip2p.video_edit.VideoOptions` or a preset name (``naive``, ``noise``,
        ``attention``, ``attention+previous``, ``blend``; changes after slashes, ``blend/every=2``,
        see :func:`~ip2p.video_edit.technique`); ``options`` or ``option_values`` as for
        :meth:`edit`. ``progress(frames_done, frames)`` per batch, ``callback`` per denoising step.
        Returns a :class:`~ip2p.video_edit.VideoResult` (frames, shared parameters, flicker figures).
        """
        from .video import read_video
        from .video_edit import edit_video, technique

        if options is not None and option_values:
            raise BadOptions("give options as an EditOptions or as keywords, not both")
        if not isinstance(frames, list | tuple):
            frames = read_video(frames).frames
        video = technique(video) if isinstance(video, str) else video
        with self._lock:  # the attention processors it installs must not meet another thread's edit
            return edit_video(self, frames, instruction, options or EditOptions.from_mapping(option_values), video,
                              work_dir=work_dir, progress=progress, step_callback=callback)

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
        mask: Any = None,
        preview: PreviewCallback | None = None,
        preview_every: int = 5,
        segmenter: Any = None,
    ) -> EditResult:
        """Edit ``images`` with validated ``options``; see :meth:`edit`.

        ``seeds``, when given, holds one seed per output (input-major, ``num_images`` per input) and
        replaces ``options.seed + i``: a batch job can then run many (image, seed) pairs as one batch.
        """
        from . import masks as M
        from .images import load_image, restore_size, to_working

        check_instruction(instruction)
        if not images:
            raise BadOptions("no image given")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadOptions(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(preview_every, int) or preview_every < 1:
            raise BadOptions(f"preview_every must be a positive integer, got {preview_every!r}")
        from_model = [name for name in options.unset() if name in self.recommended]
        opts = options.check(self.recommended)
        if opts.resolution is None:
            opts = dataclasses.replace(opts, resolution=self.native_resolution)
        align = max(opts.align, self.vae_scale_factor)
        sources = [load_image(im) for im in images]
        working = [to_working(im, opts.resolution, align) for im in sources]
        requests = self._mask_requests(mask, len(sources))
        # Masks known before sampling (files, phrases), at each input's own size.
        given: list[np.ndarray | None] = [None] * len(sources)
        notes: list[str | None] = [None] * len(sources)
        for j, request in enumerate(requests):
            if request is not None and request.kind == "image":
                given[j], notes[j] = M.load_mask(request.source, sources[j].size, request.name)
            elif request is not None and request.kind == "text":
                segmenter = self._segmenter(segmenter)
                given[j] = segmenter(sources[j], request.source)
                M.check_not_empty(given[j], f"mask {request.label!r}", what="matching")

        # Output k of input j is row j * num_images + k; it uses seed + that index.
        jobs = [(j, k) for j in range(len(sources)) for k in range(opts.num_images)]
        if seeds is None:
            seeds = [opts.seed + i for i in range(len(jobs))]
        elif len(seeds) != len(jobs) or not all(isinstance(x, int) and 0 <= x < 2**63 for x in seeds):
            raise BadOptions(f"seeds must be {len(jobs)} integers in [0, 2**63), one per output")
        auto = [i for i, (j, _) in enumerate(jobs) if requests[j] is not None and requests[j].kind == M.AUTO]
        chunks = self._chunks(range(len(jobs)), jobs, working, batch_size)
        first = self._chunks(auto, jobs, working, batch_size)
        total_steps = (len(chunks) + len(first)) * opts.steps
        progress = _Progress(callback, total_steps, opts.steps)

        job_masks: list[np.ndarray | None] = [given[j] for j, _ in jobs]  # at the input's size
        outputs: list[Image.Image | None] = [None] * len(jobs)
        with self._lock:
            text = self.encode_instruction(instruction)
            uncond = self.encode_instruction(opts.negative_prompt)
            sample = dict(jobs=jobs, working=working, seeds=seeds, text=text, uncond=uncond, opts=opts,
                          progress=progress, preview=preview, preview_every=preview_every)
            if first:
                # --mask auto: an unmasked pass; where it changed the picture becomes the mask.
                drafts = self._run(first, [None] * len(jobs), **sample)
                for i in auto:
                    j = jobs[i][0]
                    changed = M.change_mask(working[j], drafts[i], opts.mask_threshold, opts.mask_dilation)
                    M.check_not_empty(changed, "mask auto", what="changed")
                    job_masks[i] = M.resize_mask(changed, sources[j].size)
            working_masks = [None if m is None else M.resize_mask(m, working[j].size)
                             for m, (j, _) in zip(job_masks, jobs, strict=True)]
            for i, picture in self._run(chunks, working_masks, **sample).items():
                outputs[i] = picture

        params = []
        final: list[Image.Image] = []
        for index, (j, _k) in enumerate(jobs):
            picture = outputs[index]
            assert picture is not None
            keep_working = opts.keep_working_size or picture.size == sources[j].size
            if not keep_working:
                picture = restore_size(picture, sources[j].size)
            job_mask = job_masks[index]
            if job_mask is not None:
                # The guarantee: outside the feathered mask, the input's own pixels.
                base, area = (working[j], working_masks[index]) if keep_working else (sources[j], job_mask)
                if keep_working and picture.size != sources[j].size:
                    area = M.resize_mask(job_mask, picture.size)
                picture = M.paste_back(base, picture, area, opts.mask_feather)
            record = self._params(instruction, opts, seeds[index], sources[j], picture, working[j],
                                  input_names[j] if input_names else None)
            if job_mask is not None:
                record.update(self._mask_params(requests[j], job_mask, opts, notes[j],
                                                getattr(segmenter, "name", None)))
            if from_model:
                record["model_defaults"] = from_model
            if opts.watermark:  # every surface's outputs; pasted back again so a mask's outside stays exact
                marked, fields = mark_output(picture, record)
                picture = marked if job_mask is None else M.paste_back(base, marked, area, opts.mask_feather)
                record.update(fields)
            final.append(picture)
            params.append(record)
        return EditResult(final, params, job_masks)

    def batch_key(self, image: Image.Image, options: EditOptions) -> tuple:
        """What edits must agree on to share a UNet batch in :meth:`edit_batch`: working size, steps,
        scheduler and both guidance scales (once the model's recommendations fill the gaps), and this
        editor's mode. Instruction, negative prompt, seed, ``num_images`` and output options may differ."""
        from .images import working_size

        opts = self._resolved(options)
        size = working_size(*image.size, resolution=opts.resolution, align=max(opts.align, self.vae_scale_factor))
        return self._batch_key(opts, size)

    def edit_batch(self, requests: Sequence[tuple[Any, str, EditOptions]], *, callback: ProgressCallback | None = None,
                   batch_size: int = 8, pad_to: int | None = None) -> list[EditResult]:
        """Edit unmasked requests, ``(image, instruction, options)`` each, in shared UNet batches of at
        most ``batch_size`` outputs: the HTTP server's request batching.

        The requests must share one :meth:`batch_key`. Each keeps its own instruction and negative
        prompt (one text row per output: :func:`ip2p.sampler.denoise` takes ``(B, seq, dim)``) and its own
        seeds (one CPU generator per output), so result ``r`` holds the parameters that
        ``edit_with([image], instruction, options)`` records for that request alone, and its pixels up
        to float rounding: matrix and convolution kernels pick their algorithm by batch shape (on the
        tiny model, at most 1/255 in a few pixels). ``pad_to`` removes even that: every batch runs at
        exactly ``pad_to`` outputs (filled with copies of the last one, each output encoded as its own
        input), so the shapes never change and an output's bits do not depend on its neighbours.
        """
        from .images import load_image, restore_size, to_working

        if not requests:
            raise BadOptions("no request given")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadOptions(f"batch_size must be a positive integer, got {batch_size!r}")
        prepared = []  # (instruction, checked options, source, working image, fields the model filled)
        for image, instruction, options in requests:
            check_instruction(instruction)
            from_model = [name for name in options.unset() if name in self.recommended]
            opts = self._resolved(options)
            source = load_image(image)
            working = to_working(source, opts.resolution, max(opts.align, self.vae_scale_factor))
            prepared.append((instruction, opts, source, working, from_model))
        if len({self._batch_key(p[1], p[3].size) for p in prepared}) > 1:
            raise BadOptions("these requests cannot share a UNet batch: their working sizes, steps, schedulers or "
                             "guidance scales differ")
        jobs = [(r, k) for r, p in enumerate(prepared) for k in range(p[1].num_images)]
        seeds = [prepared[r][1].seed + k for r, k in jobs]
        owners = [r for r, _ in jobs]  # the request of each row
        working = [p[3] for p in prepared]
        runs = jobs
        if pad_to is not None:
            if not isinstance(pad_to, int) or pad_to < 1:
                raise BadOptions(f"pad_to must be a positive integer, got {pad_to!r}")
            filler = -len(jobs) % pad_to
            owners += [owners[-1]] * filler
            seeds = seeds + [seeds[-1]] * filler
            working = [prepared[r][3] for r in owners]  # one input per row: the VAE batch is fixed too
            runs, batch_size = [(i, 0) for i in range(len(owners))], pad_to
        shared = prepared[0][1]  # what sampling reads (steps, scheduler, scales) is the same for all
        chunks = self._chunks(range(len(runs)), runs, working, batch_size)
        progress = _Progress(callback, len(chunks) * shared.steps, shared.steps)
        outputs: dict[int, Image.Image] = {}
        with self._lock:
            texts = [self.encode_instruction(p[0]) for p in prepared]
            unconds = [self.encode_instruction(p[1].negative_prompt) for p in prepared]
            for chunk in chunks:
                rows = [owners[i] for i in chunk]
                outputs.update(self._run([chunk], [None] * len(runs), jobs=runs, working=working, seeds=seeds,
                                         text=torch.cat([texts[r] for r in rows]),
                                         uncond=torch.cat([unconds[r] for r in rows]), opts=shared,
                                         progress=progress, preview=None, preview_every=1))

        results = []
        for r, (instruction, opts, source, work, from_model) in enumerate(prepared):
            final, params = [], []
            for index in (i for i, (j, _) in enumerate(jobs) if j == r):
                picture = outputs[index]
                if not (opts.keep_working_size or picture.size == source.size):
                    picture = restore_size(picture, source.size)
                record = self._params(instruction, opts, seeds[index], source, picture, work, None)
                if from_model:
                    record["model_defaults"] = from_model
                if opts.watermark:
                    picture, fields = mark_output(picture, record)
                    record.update(fields)
                final.append(picture)
                params.append(record)
            results.append(EditResult(final, params, [None] * len(final)))
        return results

    def _resolved(self, options: EditOptions) -> EditOptions:
        """``options`` checked, the model's recommendations and native size filling what is unset."""
        opts = options.check(self.recommended)
        return opts if opts.resolution is not None else dataclasses.replace(opts, resolution=self.native_resolution)

    def _batch_key(self, opts: EditOptions, working_size: tuple[int, int]) -> tuple:
        return (working_size, opts.steps, opts.scheduler, opts.guidance_scale, opts.image_guidance_scale,
                self.runner.mode)

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _chunks(indices, jobs, working, batch_size: int) -> list[list[int]]:
        """Job indices grouped by working size (one UNet batch each), at most ``batch_size`` a group."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            by_size.setdefault(working[jobs[index][0]].size, []).append(index)
        return [idx[i:i + batch_size] for idx in by_size.values() for i in range(0, len(idx), batch_size)]

    def _run(self, chunks, masks, *, jobs, working, seeds, text, uncond, opts, progress, preview,
             preview_every) -> dict[int, Image.Image]:
        """Sample and decode every chunk; ``masks`` (per job, working size, or None) pin the rest."""
        from .masks import latent_keep

        pictures: dict[int, Image.Image] = {}
        for chunk in chunks:
            inputs = [jobs[i][0] for i in chunk]
            unique = sorted(set(inputs))
            latents = self._guard(self.encode_images, [working[j] for j in unique])
            rows = torch.stack([latents[unique.index(j)] for j in inputs])
            generators = [torch.Generator("cpu").manual_seed(seeds[i]) for i in chunk]
            blend = None
            if any(masks[i] is not None for i in chunk):
                h, w = rows.shape[-2:]
                keep = [np.zeros((h, w), np.float32) if masks[i] is None else latent_keep(masks[i], self.vae_scale_factor)
                        for i in chunk]
                blend = LatentBlend(torch.from_numpy(np.stack(keep))[:, None],
                                    rows * self.components.vae.config.scaling_factor)
            on_preview = None
            if preview is not None:
                def on_preview(step: int, total: int, estimate: torch.Tensor) -> None:
                    if step % preview_every == 0 or step == total:
                        preview(progress.at(step, total), progress.total, self.decode_latents(estimate, final=False))
            result = self._guard(self._sample, Conditioning(text, uncond, rows), opts, generators,
                                 progress.step, blend, on_preview)
            pictures.update(zip(chunk, self.decode_latents(result), strict=True))
            progress.done += opts.steps
        return pictures

    @torch.inference_mode()
    def _sample(self, cond: Conditioning, opts: EditOptions, generators, on_step, blend=None,
                preview=None) -> torch.Tensor:
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
            blend=blend,
            preview=preview,
        )

    @staticmethod
    def _mask_requests(mask: Any, count: int) -> list:
        from .masks import parse_mask

        if isinstance(mask, list | tuple):
            if len(mask) != count:
                raise BadOptions(f"mask: got {len(mask)} masks for {count} images; give one, or one per image")
            return [parse_mask(m) for m in mask]
        request = parse_mask(mask)
        return [request] * count

    def _segmenter(self, segmenter: Any):
        """The phrase-to-mask model: the one given, else the default CLIPSeg (loaded once)."""
        from .masks import DEFAULT_SEGMENTER, TextSegmenter

        if isinstance(segmenter, TextSegmenter):
            return segmenter
        key = segmenter or DEFAULT_SEGMENTER
        cached = getattr(self, "_segmenters", {})
        if key not in cached:
            cached[key] = TextSegmenter(key)
            self._segmenters = cached
        return cached[key]

    @staticmethod
    def _mask_params(request, mask: np.ndarray, opts: EditOptions, note: str | None,
                     segmenter_name: str | None) -> dict[str, Any]:
        from .masks import AUTO, mask_digest

        record: dict[str, Any] = {"mask": request.label, "mask_sha256": mask_digest(mask),
                                  "mask_feather": opts.mask_feather}
        if request.kind == AUTO:
            record.update(mask_threshold=opts.mask_threshold, mask_dilation=opts.mask_dilation)
        if request.kind == "text":
            record["segmenter"] = segmenter_name
        if note:
            record["mask_note"] = note
        return record

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
        replayed = {key: getattr(opts, key) for key in REPLAYED if key not in MASK_OPTIONS}
        params = {"instruction": instruction, **replayed, "seed": seed}
        params.update({
            "width": picture.size[0],
            "height": picture.size[1],
            "working_width": working.size[0],
            "working_height": working.size[1],
            "model": self.model_name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
            "input_sha256": pixel_digest(source),
            "ip2p_version": __version__,
        })
        if name:
            params["input"] = name
        if self.device.type == "cpu":
            # Another CPU thread count sums in another order (a pixel may move by one level); a
            # replay runs at this one (ip2p.provenance.replay, ip2p edit --replay).
            params["cpu_threads"] = torch.get_num_threads()
        if self.runner.mode != "default":
            params["mode"] = self.runner.mode  # "approx" output differs from the default mode's
        return params


@dataclass
class _Progress:
    """Steps done over every pass of one call, reported through the user's callback."""

    callback: ProgressCallback | None
    total: int
    steps: int  # per pass, as the user asked; a scheduler may take more (PNDM's warm-up: one more)
    done: int = 0

    def at(self, step: int, total: int) -> int:
        """Steps done overall when a pass of ``total`` scheduler steps is at ``step``."""
        return self.done + (step if total == self.steps else round(step * self.steps / total))

    def step(self, step: int, total: int) -> None:
        if self.callback is not None:
            self.callback(self.at(step, total), self.total)


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
