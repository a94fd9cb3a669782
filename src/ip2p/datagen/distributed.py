"""The image stage over a Ray cluster (Ray Data): one model replica per GPU, prompts spread.

Each actor of the pool loads the text-to-image model and CLIP once, then takes prompt indices from
a Ray dataset and runs :func:`.pipeline.generate_prompt` for each, writing straight into the shared
output folder. The folder must be visible to every node (a shared file system); the store's
per-prompt folders and atomic writes make concurrent writers safe, and a resumed run skips what
any worker finished.
"""

from __future__ import annotations

from dataclasses import asdict

from ..errors import BadOptions
from .clipfilter import FilterOptions
from .images import ImageOptions
from .pipeline import RunSummary


class _Worker:
    """A Ray Data callable class: model and CLIP are loaded once per actor."""

    def __init__(self, prompts_path, out, model, clip, image_options, filter_options, device, dtype, threads):
        import torch

        from .clipfilter import ClipScorer
        from .images import PairRenderer, load_t2i
        from .store import PairStore
        from .text import read_prompts

        if threads:
            torch.set_num_threads(threads)
        self.prompts = read_prompts(prompts_path)
        self.renderer = PairRenderer(load_t2i(model, device=device, dtype=dtype), ImageOptions(**image_options))
        self.scorer = ClipScorer.load(clip, device=device)
        self.store = PairStore(out, jpeg_quality=image_options["jpeg_quality"])
        self.filter = FilterOptions(**filter_options)

    def __call__(self, batch):
        from .pipeline import generate_prompt

        made, kept = [], []
        for index in batch["index"]:
            index = int(index)
            if self.store.is_done(index):
                made.append(0)
                kept.append(-1)
                continue
            m, k = generate_prompt(index, self.prompts[index], self.renderer, self.scorer, self.store, self.filter)
            made.append(m)
            kept.append(k)
        return {"index": batch["index"], "made": made, "kept": kept}


def run_images_ray(
    prompts_path: str,
    out: str,
    model: str,
    clip: str,
    indices: list[int],
    image_options: ImageOptions,
    filter_options: FilterOptions,
    *,
    address: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    num_cpus: int | None = None,
    threads: int | None = None,
) -> RunSummary:
    """Spread ``indices`` over a Ray cluster; ``address`` None starts a local one.

    ``workers`` defaults to the cluster's GPU count (each actor takes one GPU), or 1 actor when
    the cluster has no GPU. ``num_cpus`` caps a local cluster's CPUs.
    """
    try:
        import ray
    except ImportError:
        raise BadOptions("--ray needs Ray: pip install 'ray[data]'") from None
    from .store import PairStore

    image_options.check()
    filter_options.check()
    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise BadOptions(f"cannot connect to Ray cluster {address!r}: {exc}") from None
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and device != "cpu"
        size = workers or (gpus if use_gpu else 1)
        if size < 1:
            raise BadOptions(f"workers must be at least 1, got {size}")
        dataset = ray.data.from_items([{"index": i} for i in indices])
        results = dataset.map_batches(
            _Worker,
            fn_constructor_kwargs=dict(prompts_path=str(prompts_path), out=str(out), model=str(model), clip=str(clip),
                                       image_options=asdict(image_options), filter_options=asdict(filter_options),
                                       device=device if not use_gpu else "cuda", dtype=dtype, threads=threads),
            batch_size=1,
            concurrency=size,
            num_gpus=1 if use_gpu else 0,
            num_cpus=1,
        ).take_all()
    finally:
        if started:
            ray.shutdown()
    summary = RunSummary()
    for row in results:
        if row["kept"] < 0:
            summary.skipped += 1
            continue
        summary.prompts += 1
        summary.pairs_generated += int(row["made"])
        summary.pairs_kept += int(row["kept"])
        summary.kept_per_prompt[int(row["index"])] = int(row["kept"])
    PairStore(out).write_seeds()
    return summary
