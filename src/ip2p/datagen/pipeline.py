"""The image stage end to end on one process: prompts -> pairs -> CLIP filter -> data set.

For every prompt of this shard that is not done: render its remaining pairs in batches, score
each batch with CLIP, record every pair in the store (images only for pairs that pass the
thresholds), then keep the best ``keep`` by directional similarity and mark the prompt done.
A killed run started again skips done prompts and, within a prompt, the pairs already recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import BadOptions, Cancelled
from .clipfilter import ClipScorer, FilterOptions, passes, select
from .images import ImageOptions, PairRenderer, pair_specs, to_pil
from .store import PairStore

#: ``progress(event, info)``: "pair" after each recorded pair, "prompt" after each finished prompt.
Progress = Callable[[str, dict], None]


@dataclass
class RunSummary:
    prompts: int = 0
    skipped: int = 0
    pairs_generated: int = 0
    pairs_kept: int = 0
    kept_per_prompt: dict = field(default_factory=dict)


def shard(count: int, partitions: int = 1, partition: int = 0) -> list[int]:
    """Prompt indices of one shard: ``index % partitions == partition``."""
    if partitions < 1:
        raise BadOptions(f"partitions must be at least 1, got {partitions}")
    if not 0 <= partition < partitions:
        raise BadOptions(f"partition must be in [0, {partitions - 1}], got {partition}")
    return [i for i in range(count) if i % partitions == partition]


def generate_prompt(index: int, prompt: dict, renderer: PairRenderer, scorer: ClipScorer, store: PairStore,
                    filter_options: FilterOptions, progress: Progress | None = None) -> tuple[int, int]:
    """Make all missing pairs of one prompt and finish it; returns (pairs generated now, kept)."""
    options = renderer.options
    store.begin(index, prompt)
    done = {int(r["seed"]) for r in store.candidates(index)}
    todo = [s for s in pair_specs(index, options) if s.seed not in done]
    made = 0
    for specs, src, edit in renderer.render(prompt["caption"], prompt["output"], todo):
        scores = scorer.score(src, edit, prompt["caption"], prompt["output"])
        src_images, edit_images = to_pil(src), to_pil(edit)
        for k, (spec, score) in enumerate(zip(specs, scores, strict=True)):
            record = {"seed": spec.seed, "p": spec.p, "cfg": spec.cfg, **score}
            ok = passes(record, filter_options)
            store.add_candidate(index, record, (src_images[k], edit_images[k]) if ok else None)
            made += 1
            if progress is not None:
                progress("pair", {"index": index, "seed": spec.seed, "passed": ok})
    kept = select(store.candidates(index), filter_options)
    store.finish(index, kept)
    if progress is not None:
        progress("prompt", {"index": index, "kept": len(kept)})
    return made, len(kept)


def run_images(
    prompts: Sequence[dict],
    out: str,
    renderer: PairRenderer,
    scorer: ClipScorer,
    filter_options: FilterOptions | None = None,
    *,
    indices: Sequence[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Generate the pairs of ``prompts[i]`` for ``i`` in ``indices`` (default: all) into ``out``."""
    filter_options = (filter_options or FilterOptions()).check()
    options: ImageOptions = renderer.options
    store = PairStore(out, jpeg_quality=options.jpeg_quality)
    summary = RunSummary()
    for index in indices if indices is not None else range(len(prompts)):
        if should_stop is not None and should_stop():
            raise Cancelled("image generation stopped")
        if store.is_done(index):
            summary.skipped += 1
            continue
        made, kept = generate_prompt(index, prompts[index], renderer, scorer, store, filter_options, progress)
        summary.prompts += 1
        summary.pairs_generated += made
        summary.pairs_kept += kept
        summary.kept_per_prompt[index] = kept
    store.write_seeds()
    return summary
