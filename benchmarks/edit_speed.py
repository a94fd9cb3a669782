"""Edit latency, throughput, memory and cold start: ip2p's modes against the stock diffusers pipeline.

One process, same weights, scheduler, steps, size and seed for every mode; modes alternate inside
each repetition so machine load hits all of them alike. Reported per (mode, size): median and min
latency of one end-to-end edit (PIL in, PIL out), images/s for a batch of ``--batch`` images with
one instruction, the output change against the stock pipeline (PSNR, uint8 pixels), and, from a
fresh subprocess per mode, the time from process start to the first finished edit and the peak
memory of that process (CPU: peak RSS; GPU: ``max_memory_allocated`` / ``max_memory_reserved``).

Modes: ``ip2p-default``, ``ip2p-fast`` (exact: channels_last, fused QKV, torch.compile per shape,
on-disk compile cache), ``ip2p-fast-eager`` (the same without the compiler), ``ip2p-low-memory``,
``ip2p-approx`` (DeepCache, APPROXIMATE), ``stock-eager``, ``stock-recipe`` (diffusers' speed recipe:
channels_last, ``fuse_qkv_projections``, ``torch.compile(unet, mode="reduce-overhead",
fullgraph=True)`` and the same for ``vae.decode``; on CPU without "reduce-overhead", which is a CUDA
graph mode) and ``stock-offload`` (``enable_model_cpu_offload``, GPU only).

Models (``--model``): ``tiny`` (ip2p.tiny), ``sd-small`` (SD-1.5 block layout at reduced widths,
the CPU default), ``sd15`` (full SD-1.5 shapes with random weights and the real CLIP tokenizer,
the GPU default), ``demo`` or any model folder/file ip2p can load.

    python benchmarks/edit_speed.py --smoke --json /tmp/smoke.json          # seconds, tiny model
    python benchmarks/edit_speed.py --json perf.json --chart perf.png       # CPU: sd-small
    python benchmarks/edit_speed.py --device cuda --json gpu.json --chart gpu.png

See docs/performance.md for the figures and how to run this on a GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.time()  # as early as possible: the cold-start clock of a child process

import numpy as np  # noqa: E402
import torch  # noqa: E402

ALL_MODES = ("ip2p-default", "ip2p-fast", "ip2p-fast-eager", "ip2p-low-memory", "ip2p-approx",
             "stock-eager", "stock-recipe", "stock-offload")
#: Modes that must reproduce the stock output (PSNR >= EXACT_DB); the rest are reported only.
EXACT = {"ip2p-default", "ip2p-fast", "ip2p-fast-eager", "ip2p-low-memory", "stock-recipe", "stock-offload"}
EXACT_DB = 40.0
INSTRUCTION = "turn the circle red"


# ------------------------------------------------------------------------------------------------
# models, built in code (no downloads)


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """Components for ``name``; random models are seeded, so every process builds the same weights."""
    from ip2p.models import Components, load_components
    from ip2p.tiny import SD15_SCHEDULER_CONFIG, build_tiny_components

    if name == "tiny":
        return build_tiny_components(seed=0).to(device, dtype)
    if name not in ("sd-small", "sd15"):
        return load_components(name, device=device, dtype=dtype)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ip2p.convert import real_clip_tokenizer

    full = name == "sd15"
    unet_w = (320, 640, 1280, 1280) if full else (32, 64, 128, 128)
    vae_w = (128, 256, 512, 512) if full else (32, 32, 64, 64)
    text = (768, 3072, 12, 12) if full else (128, 512, 2, 2)  # hidden, mlp, layers, heads (ViT-L/14 when full)
    torch.manual_seed(0)
    with torch.device(device):  # random init where it will run: seconds instead of minutes for 860 M
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=8, out_channels=4, block_out_channels=unet_w, layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=text[0], attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=vae_w, latent_channels=4,
            layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=text[0], intermediate_size=text[1], num_hidden_layers=text[2],
            num_attention_heads=text[3], max_position_embeddings=77, hidden_act="quick_gelu",
            projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    for module in (unet, vae, encoder):
        module.eval().requires_grad_(False)
    comps = Components(unet, vae, encoder, real_clip_tokenizer(), dict(SD15_SCHEDULER_CONFIG), name=name,
                       source="random weights")
    return comps.to(device, dtype)


def test_image(size: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, 255 * ((x - size / 2) ** 2 + (y - size / 2) ** 2 < size**2 / 9)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------
# runners: one callable per mode, (images, seed) -> list of PIL images


def make_runner(mode: str, base, args, device):
    """Build mode ``mode`` over its own copy of the model where the mode changes modules in place."""
    from ip2p.editor import Editor
    from ip2p.fast import optimize
    from ip2p.sampler import make_scheduler

    def own():
        return copy.deepcopy(base)

    if mode.startswith("ip2p-"):
        kind = mode.removeprefix("ip2p-")
        if kind == "default":
            editor = Editor(base)
        elif kind == "fast-eager":
            editor = optimize(Editor(own()), "fast", compile=False)
        elif kind == "fast":
            editor = optimize(Editor(own()), "fast", use_cache=not args.no_cache)
        elif kind == "low-memory":
            editor = optimize(Editor(own()), "low-memory")
        else:  # a model takes one mode (modes change modules in place): each gets its own copy
            editor = optimize(Editor(own()), "approx", interval=args.interval)

        def run(images, seed):
            return editor.edit(list(images), INSTRUCTION, steps=args.steps, seed=seed, scheduler=args.scheduler,
                               guidance_scale=7.5, image_guidance_scale=1.5,  # as the stock call below, not the model's own
                               resolution=images[0].size[0], batch_size=len(images)).images
        return run

    from diffusers import StableDiffusionInstructPix2PixPipeline

    comps = base if mode == "stock-eager" else own()
    if mode == "stock-offload":
        comps.to("cpu")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
        scheduler=make_scheduler(args.scheduler, comps.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if mode == "stock-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "stock-recipe":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        from diffusers import AutoencoderKL

        pipe.fuse_qkv_projections(vae=isinstance(pipe.vae, AutoencoderKL))  # diffusers fuses only a KL VAE's
        kw = {"fullgraph": True, **({"mode": "reduce-overhead"} if device.type == "cuda" else {})}
        pipe.unet = torch.compile(pipe.unet, **kw)
        pipe.vae.decode = torch.compile(pipe.vae.decode, **kw)

    def run(images, seed):
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(images))]
        return pipe([INSTRUCTION] * len(images), image=list(images), num_inference_steps=args.steps,
                    guidance_scale=7.5, image_guidance_scale=1.5, generator=gens).images
    return run


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``ru_maxrss`` survives ``execve``, so a child
    started by a big parent would report the parent's peak; ``VmHWM`` belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# the child: one mode in a fresh process, for cold start and isolated peak memory


def child(args) -> None:
    device, dtype = setup(args)
    base = build_model(args.model, device, dtype)
    image = test_image(args.sizes[0])
    run = make_runner(args.child, base, args, device)
    run([image], 1)
    sync(device)
    first = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    run([image], 1)
    sync(device)
    out = {"first_edit_at": first, "t0": _T0, "warm_s": time.perf_counter() - t,
           "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    print("RESULT " + json.dumps(out), flush=True)


def cold_start(args, mode: str, size: int, env_extra: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--sizes", str(size)] + passthrough(args)
    env = dict(os.environ, **env_extra)
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"mode": mode, "size": size, "error": tail[:300]}
    data = json.loads(lines[-1][7:])
    return {"mode": mode, "size": size, "first_edit_s": data["first_edit_at"] - started,
            **{k: v for k, v in data.items() if k not in ("first_edit_at", "t0")}}


def passthrough(args) -> list[str]:
    out = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps),
           "--scheduler", args.scheduler, "--threads", str(args.threads), "--interval", str(args.interval)]
    return out + (["--no-cache"] if args.no_cache else [])


# ------------------------------------------------------------------------------------------------
# the parent


def setup(args):
    from ip2p.models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return device, resolve_dtype(args.dtype, device)


def versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        child(args)
        return 0
    if args.plot:  # chart from saved JSON files (e.g. GPU runs split into several commands)
        reports = [json.loads(Path(f).read_text()) for f in args.plot.split(",")]
        merged = {"meta": reports[0]["meta"], **{k: [r for rep in reports for r in rep[k]]
                                                 for k in ("latency", "batch", "compile", "cold_start")}}
        chart(merged, Path(args.chart or "chart.png"))
        return 0
    device, dtype = setup(args)
    modes = [m for m in args.modes if device.type == "cuda" or m != "stock-offload"]
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "model": args.model,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."), "steps": args.steps,
            "scheduler": args.scheduler, "reps": args.reps, "batch": args.batch, "modes": modes,
            "loadavg_start": os.getloadavg(), **versions()}
    log(f"{meta['device']}, {args.model}, {args.steps} steps, modes {', '.join(modes)}")
    base = build_model(args.model, device, dtype)
    runners, results, batch, compile_s = {}, [], [], []
    for mode in modes:
        runners[mode] = make_runner(mode, base, args, device)
    for size in args.sizes:
        image = test_image(size)
        outputs, first = {}, {}
        for mode in modes:  # first call: compiles where a mode compiles
            t = time.perf_counter()
            outputs[mode] = runners[mode]([image], 1)[0]
            sync(device)
            first[mode] = time.perf_counter() - t
        times: dict[str, list[float]] = {m: [] for m in modes}
        for rep in range(args.reps):
            order = modes if rep % 2 == 0 else modes[::-1]
            for mode in order:
                t = time.perf_counter()
                runners[mode]([image], 1)
                sync(device)
                times[mode].append(time.perf_counter() - t)
            log(f"{size}px rep {rep + 1}/{args.reps}: " + ", ".join(f"{m} {times[m][-1]:.3f}s" for m in modes))
        ref = outputs.get("stock-eager", outputs[modes[0]])
        for mode in modes:
            db = psnr(ref, outputs[mode])
            med = statistics.median(times[mode])
            results.append({"mode": mode, "size": size, "median_s": med, "min_s": min(times[mode]),
                            "times_s": times[mode], "psnr_vs_stock_db": db, "exact_mode": mode in EXACT,
                            "ok": (db >= EXACT_DB) if mode in EXACT else None})
            compile_s.append({"mode": mode, "size": size, "first_call_s": first[mode],
                              "first_minus_median_s": first[mode] - med})
        if args.batch > 1:
            # alternating rounds, median per mode: one call per mode is too noisy on a shared CPU
            images = [test_image(size)] * args.batch
            batch_times: dict[str, list[float]] = {mode: [] for mode in modes}
            for mode in modes:
                runners[mode](images, 1)  # warm-up (a new shape compiles again)
                sync(device)
            for _ in range(max(1, min(args.reps, 3))):
                for mode in modes:
                    t = time.perf_counter()
                    runners[mode](images, 1)
                    sync(device)
                    batch_times[mode].append(time.perf_counter() - t)
            for mode in modes:
                batch.append({"mode": mode, "size": size, "batch": args.batch, "times_s": batch_times[mode],
                              "images_per_s": args.batch / statistics.median(batch_times[mode])})
    cold: list[dict] = []
    meta["loadavg_end"] = os.getloadavg()
    if args.json:  # written now and again at the end: a long cold-start phase can be cut short
        write_atomic(Path(args.json), json.dumps({"meta": meta, "latency": results, "batch": batch,
                                                  "compile": compile_s, "cold_start": cold}, indent=2).encode())
    if args.cold_start:
        for mode in [m for m in modes if m in args.cold_modes] or modes[:1]:
            with tempfile.TemporaryDirectory() as ip2p_cache, tempfile.TemporaryDirectory() as ind:
                env = {"IP2P_CACHE_DIR": ip2p_cache, "TORCHINDUCTOR_CACHE_DIR": ind, "OMP_NUM_THREADS": str(args.threads)}
                cold.append({**cold_start(args, mode, args.sizes[0], env), "caches": "empty"})
                log(f"cold start {mode}: {cold[-1]}")
                if mode == "ip2p-fast" and not args.no_cache and device.type == "cuda":  # CPU: frozen, uncached
                    with tempfile.TemporaryDirectory() as ind2:  # only ip2p's saved artifacts carry over
                        env["TORCHINDUCTOR_CACHE_DIR"] = ind2
                        cold.append({**cold_start(args, mode, args.sizes[0], env), "caches": "ip2p compile cache"})
                        log(f"cold start {mode} (cache): {cold[-1]}")
    meta["loadavg_end"] = os.getloadavg()
    report = {"meta": meta, "latency": results, "batch": batch, "compile": compile_s, "cold_start": cold}
    print_table(report)
    if args.json:
        write_atomic(Path(args.json), json.dumps(report, indent=2).encode())
    if args.chart:
        chart(report, Path(args.chart))
    bad = [r for r in results if r["ok"] is False]
    for r in bad:
        log(f"NOT EXACT: {r['mode']} at {r['size']}px: {r['psnr_vs_stock_db']:.1f} dB < {EXACT_DB} dB")
    return 1 if bad else 0


def print_table(report) -> None:
    base = {(r["size"]): r["median_s"] for r in report["latency"] if r["mode"] == "stock-eager"}
    print(f"{'mode':18} {'size':>5} {'median s':>9} {'min s':>8} {'vs stock':>8} {'PSNR dB':>8}")
    for r in report["latency"]:
        speed = base.get(r["size"], float("nan")) / r["median_s"]
        print(f"{r['mode']:18} {r['size']:5d} {r['median_s']:9.3f} {r['min_s']:8.3f} {speed:7.2f}x "
              f"{r['psnr_vs_stock_db']:8.1f}")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def chart(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = report["latency"]
    modes = list(dict.fromkeys(r["mode"] for r in lat))
    sizes = sorted({r["size"] for r in lat})
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        xs = [k + i * width for k in range(len(sizes))]
        a.bar(xs, [next((r["median_s"] for r in lat if r["mode"] == mode and r["size"] == s), 0) for s in sizes],
              width, label=mode)
    a.set_xticks([k + 0.4 - width / 2 for k in range(len(sizes))], [f"{s}px" for s in sizes])
    a.set_ylabel("median seconds per edit")
    a.set_title(f"latency ({report['meta']['device']}, {report['meta']['steps']} steps)")
    a.legend(fontsize=7)
    cold = [c for c in report["cold_start"] if "error" not in c]
    key = "peak_alloc_gib" if any("peak_alloc_gib" in c for c in cold) else "peak_rss_mb"
    labels = [f"{c['mode']}\n({c['caches']})" for c in cold]
    b.bar(range(len(cold)), [c[key] for c in cold], color="tab:orange")
    b.set_xticks(range(len(cold)), labels, rotation=30, fontsize=7, ha="right")
    b.set_ylabel("GiB allocated" if key == "peak_alloc_gib" else "peak RSS MB")
    b.set_title(f"peak memory, one process per mode ({cold[0]['size'] if cold else '-'}px)")
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as f:
        fig.savefig(f.name, dpi=110)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="tiny, sd-small, sd15, demo or a model path")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--sizes", default=None, help="comma-separated square sizes in pixels")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--scheduler", default="euler_a")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="images per throughput call (0: skip)")
    p.add_argument("--modes", default=None, help=f"comma-separated, from {', '.join(ALL_MODES)}")
    p.add_argument("--cold-modes", default="ip2p-default,ip2p-fast,stock-eager,ip2p-low-memory,stock-offload")
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on a shared CPU)")
    p.add_argument("--interval", type=int, default=3, help="approx mode: full UNet every N steps")
    p.add_argument("--no-cache", action="store_true", help="do not use ip2p's on-disk compile cache")
    p.add_argument("--child-timeout", type=int, default=1800)
    p.add_argument("--json")
    p.add_argument("--chart")
    p.add_argument("--plot", metavar="JSON[,JSON]", help="only draw --chart from saved result files")
    p.add_argument("--smoke", action="store_true", help="tiny model, one small size, no compiler: seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if args.smoke:
        defaults = {"model": "tiny", "sizes": "32", "steps": 2, "reps": 1, "batch": 2, "threads": 1,
                    "modes": "ip2p-default,ip2p-fast-eager,ip2p-low-memory,ip2p-approx,stock-eager"}
        args.cold_modes = "ip2p-default"
    elif gpu:
        defaults = {"model": "sd15", "sizes": "512,768,1024", "steps": 20, "reps": 5, "batch": 8, "threads": 0,
                    "modes": ",".join(ALL_MODES)}
    else:
        defaults = {"model": "sd-small", "sizes": "128,256", "steps": 10, "reps": 5, "batch": 8, "threads": 1,
                    "modes": "ip2p-default,ip2p-fast,ip2p-fast-eager,ip2p-low-memory,ip2p-approx,stock-eager,stock-recipe"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.cold_modes = [m.strip() for m in args.cold_modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in ALL_MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(ALL_MODES)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
