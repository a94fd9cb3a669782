"""``ip2p batch --ray``: the job of :mod:`ip2p.batch` on a Ray cluster, through Ray Data.

It is the local job in three steps, with the local code at each:

1. The driver (the ``ip2p batch`` process) reads the inputs and checks every item's options, seeds
   and output paths (:func:`ip2p.batch.plan` with ``inspect=False``): cheap, and it needs the whole
   job in view, since two inputs must not claim one output.
2. Ray tasks read the inputs (:func:`ip2p.batch.inspect_unit`: pixel digest, working size, mask,
   and whether the outputs exist already with the same parameters). The driver records what is
   skipped or failed and groups the rest with :func:`ip2p.batch.group`, as a local job does.
3. A pool of editor actors (one model load each; one GPU each where the cluster has GPUs, else CPU
   actors) runs each group with :func:`ip2p.batch.run_units`, which writes every output atomically
   with its parameters and hands back the group's manifest lines; the driver alone appends them.

The UNet batches are therefore the local job's, and so are the pixels, bit for bit (float kernels
choose their algorithm by batch shape, so only the same batches promise the same bits). Ray Data
restarts a killed actor and runs its group again from the start: the same batch gives the same
pixels, the outputs the dead actor had written are replaced by identical ones, and the group's
manifest lines come once, from the run that finished. Inputs, outputs, mask files and a model
folder must be visible to every node at the same paths (a shared file system).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .batch import Manifest, Unit, group, inspect_unit, run_units
from .errors import BadOptions, Ip2pError, first_line

#: Units read per inspection task (step 2): small enough to spread a job, large enough to be cheap.
INSPECT_ROWS = 64


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BadOptions("--ray needs Ray Data: pip install 'ip2p[ray]'") from None
    return ray


def _inspect_rows(batch: dict[str, Any], **inspect_args: Any) -> dict[str, list]:
    """Step 2, a Ray task: read the inputs of some planned units."""
    units = [inspect_unit(pickle.loads(blob), **inspect_args) for blob in batch["unit"]]
    return {"index": list(batch["index"]), "unit": [pickle.dumps(u) for u in units]}


class _Lines:
    """Where :func:`ip2p.batch.run_units` records outcomes inside an actor: the lines go back to the
    driver (one writer for the manifest, on any file system), each with the unit's index."""

    def __init__(self, indices: dict[int, int], worker: str):
        self.indices, self.worker = indices, worker
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def record(self, unit: Unit, status: str, model: str, error: str | None = None, seconds: float | None = None):
        unit.status, unit.error = status, error
        entry = Manifest.entry(unit, status, model, error, seconds)
        entry["worker"] = self.worker
        self.rows.append((self.indices[id(unit)], entry))


class EditActor:
    """Step 3, a Ray Data callable class: one :class:`~ip2p.editor.Editor` per actor, loaded once."""

    def __init__(self, model: str, device: str, dtype: str, mode: str, threads: int | None, batch_size: int,
                 segmenter: str | None, signer: Any):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from .editor import Editor

        self.model, self.batch_size, self.segmenter, self.signer = model, batch_size, segmenter, signer
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.editor, self.error = None, None
        try:
            self.editor = Editor.load(model, device=device, dtype=dtype, mode=mode)
        except Ip2pError as exc:  # every unit it is given fails with this line, as a local job would stop on it
            self.error = str(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indices, lines = [], []
        for blob in batch["units"]:
            members: list[tuple[int, Unit]] = pickle.loads(blob)
            sink = _Lines({id(u): i for i, u in members}, self.worker)
            units = [u for _, u in members]
            try:
                if self.error is not None:
                    raise BadOptions(self.error)
                run_units(units, lambda: self.editor, sink, model=self.model, batch_size=self.batch_size,
                          segmenter=self.segmenter, signer=self.signer)
            except Exception as exc:  # noqa: BLE001 - a bug or a device failure fails this group, not the job
                done = {index for index, _ in sink.rows}
                for index, unit in members:
                    if index not in done:
                        sink.record(unit, "failed", self.model, f"{unit.item.source}: {first_line(exc)}")
            for index, entry in sink.rows:
                indices.append(index)
                lines.append(json.dumps(entry, ensure_ascii=False))
        return {"index": indices, "entry": lines}


def parse_runtime_env(text: str | None) -> dict[str, Any] | None:
    """``--ray-runtime-env``: a JSON object, or the path of a JSON file holding one."""
    if not text:
        return None
    source = text
    if not text.lstrip().startswith(("{", "[")):
        try:
            with open(text, encoding="utf-8") as handle:
                source = handle.read()
        except OSError as exc:
            raise BadOptions(f"--ray-runtime-env {text!r}: not a JSON object, and cannot read it as a file "
                             f"({exc.strerror or exc})", param="--ray-runtime-env") from None
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise BadOptions(f"--ray-runtime-env: not valid JSON ({exc})", param="--ray-runtime-env") from None
    if not isinstance(value, dict):
        raise BadOptions("--ray-runtime-env must be a JSON object, e.g. {\"pip\": [\"ip2p\"]}",
                         param="--ray-runtime-env")
    return value


def _connect(ray, address: str | None, num_cpus: int | None, runtime_env: dict | None) -> bool:
    """Join the cluster at ``address`` (None: ``RAY_ADDRESS``, else a new local instance); True when
    this call started Ray (and must stop it)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if not address and not os.environ.get("RAY_ADDRESS"):
        # A new local instance on a busy machine: its raylet waits 30 s for its agents by default.
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
        os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise BadOptions(f"--ray: cannot reach the Ray cluster {address or os.environ.get('RAY_ADDRESS') or 'local'}"
                         f": {first_line(exc)}", param="--ray") from None
    return True


def _quiet(ray) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def pool_size(resources: dict[str, float], device: str, workers: int | None, threads: int | None) -> tuple[int, bool]:
    """(actors, on GPUs): one actor per GPU where the cluster has GPUs (and ``device`` allows them),
    else one CPU actor per ``threads`` CPUs (default 1); ``workers`` overrides the count."""
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and not device.startswith(("cpu", "mps"))
    size = workers if workers is not None else (gpus if use_gpu else max(1, int(resources.get("CPU", 1)) // (threads or 1)))
    if size < 1:
        raise BadOptions(f"--ray-workers must be at least 1, got {size}", param="--ray-workers")
    return size, use_gpu


def run_units_ray(
    units: list[Unit],
    manifest: Manifest,
    *,
    model: str,
    inspect_args: dict[str, Any],
    device: str = "auto",
    dtype: str = "auto",
    mode: str = "default",
    threads: int | None = None,
    batch_size: int = 4,
    segmenter: str | None = None,
    signer: Any = None,
    address: str | None = None,
    workers: int | None = None,
    num_cpus: int | None = None,
    runtime_env: dict | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Run planned ``units`` (:func:`ip2p.batch.plan` with ``inspect=False``) on Ray; what
    :func:`ip2p.batch.run_units` does locally. ``inspect_args`` are :func:`ip2p.batch.inspect_unit`'s
    keywords. Units are updated in place with their outcomes. Returns False when stopped early."""
    ray = _ray()
    stop = stop or threading.Event()
    started = _connect(ray, address, num_cpus, runtime_env)
    try:
        _quiet(ray)
        pending = [i for i, u in enumerate(units) if u.status == "pending"]
        if pending:  # step 2
            rows = ray.data.from_items([{"index": i, "unit": pickle.dumps(units[i])} for i in pending])
            for row in rows.map_batches(_inspect_rows, fn_kwargs=inspect_args, batch_size=INSPECT_ROWS,
                                        num_cpus=1).iter_rows():
                units[int(row["index"])] = pickle.loads(row["unit"])
                if stop.is_set():
                    return False
        for unit in units:
            if unit.status in ("skipped", "failed"):
                manifest.record(unit, unit.status, model, unit.error)
        if progress:  # the bar counted these as work; reading them found them done or broken
            progress(sum(len(units[i].seeds) for i in pending if units[i].status != "pending"))
        groups = _indexed_groups(units, batch_size)
        if not groups:
            return True
        size, use_gpu = pool_size(ray.cluster_resources(), device, workers, threads)
        # Ray shows each GPU actor its one GPU as cuda:0; elsewhere the device asked for (auto: cpu)
        actor_device = "cuda" if use_gpu else ("cpu" if device == "auto" else device)
        jobs = ray.data.from_items([{"units": pickle.dumps(g)} for g in groups])
        results = jobs.map_batches(
            EditActor,
            fn_constructor_kwargs=dict(model=model, device=actor_device, dtype=dtype, mode=mode, threads=threads,
                                       batch_size=batch_size, segmenter=segmenter, signer=signer),
            batch_size=1, concurrency=size, num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else (threads or 1))
        for row in results.iter_rows():  # step 3
            entry = json.loads(row["entry"])
            unit = units[int(row["index"])]
            unit.status, unit.error = entry["status"], entry["error"]
            manifest.write(entry)
            if progress:
                progress(len(unit.seeds))
            if stop.is_set():
                return False
    finally:
        if started:
            ray.shutdown()
    return not stop.is_set()


def _indexed_groups(units: Sequence[Unit], batch_size: int) -> list[list[tuple[int, Unit]]]:
    """:func:`ip2p.batch.group` of the pending units, each unit with its index in ``units``."""
    where = {id(u): i for i, u in enumerate(units)}
    return [[(where[id(u)], u) for u in members] for members in group(units, batch_size)]
