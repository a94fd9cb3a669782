"""Load test for ``ip2p serve``: many concurrent clients against a server on loopback.

Starts ``python -m ip2p serve --no-ui`` as a subprocess on a free port (the bundled demo model when
installed, otherwise a tiny random-weight model written to a temporary folder), then runs
``--clients`` concurrent clients that send ``--requests`` edits in total to ``POST /v1/edit`` with
small images and few steps. A 429 is the server's deliberate back-pressure: the client waits the
``Retry-After`` it was given and tries again; it is counted, not failed. Everything else that is not
a 200 with a decodable image is a failure.

Prints a JSON summary per run: throughput (images/s; one image per request), latency p50/p90/p95/p99
(seconds, send to answer, queue wait included), failures, 429s, the server's batch counts, and the
model, machine, versions and date. ``--clients 8,32`` runs each client count in turn;
``--compare-batching`` starts two servers, request batching off (``--max-batch 1``) and on, and
alternates between them (``--reps`` rounds), so both are measured under the same load.

    python benchmarks/load_test.py                      # 50 clients, 500 requests
    python benchmarks/load_test.py --clients 8 --requests 40 --steps 2
    python benchmarks/load_test.py --clients 8,32 --requests 96 --compare-batching --reps 2 --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_model(workdir: Path) -> str:
    from ip2p.components import save_diffusers
    from ip2p.models import bundled_models
    from ip2p.tiny import build_tiny_components

    if "demo" in bundled_models():
        return "demo"
    return str(save_diffusers(build_tiny_components(seed=0), workdir / "tiny"))


def test_images(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


async def client_loop(client, queue: asyncio.Queue, images, fields, results):
    while True:
        try:
            index = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        started = time.perf_counter()
        throttled = 0
        while True:
            try:
                response = await client.post("/v1/edit", files={"image": ("in.png", images[index % len(images)],
                                                                          "image/png")},
                                             data={**fields, "seed": str(index)})
            except httpx.HTTPError as exc:
                results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}", "throttled": throttled})
                break
            if response.status_code == 429:
                throttled += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            ok = response.status_code == 200
            error = None
            if ok:
                try:
                    data = base64.b64decode(response.json()["images"][0]["b64_json"])
                    Image.open(io.BytesIO(data)).load()
                except Exception as exc:  # a 200 without a valid image is a failure too
                    ok, error = False, f"bad image: {exc}"
            else:
                error = f"{response.status_code}: {response.text[:200]}"
            results.append({"ok": ok, "error": error, "throttled": throttled,
                            "latency": time.perf_counter() - started})
            break


async def run_load(url: str, clients: int, requests: int, images, fields) -> dict:
    """``requests`` edits from ``clients`` concurrent clients; request i asks for seed i."""
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600.0), limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, queue, images, fields, results) for _ in range(clients)))
        wall = time.perf_counter() - started
        health = (await client.get("/health")).json()
    latencies = np.array([r["latency"] for r in results if r["ok"]])
    failures = [r["error"] for r in results if not r["ok"]]
    return {
        "requests": requests, "clients": clients, "ok": int(len(latencies)), "failed": len(failures),
        "first_failures": failures[:5], "throttled_429": int(sum(r["throttled"] for r in results)),
        "wall_s": round(wall, 1), "throughput_per_s": round(len(latencies) / wall, 3),
        "latency_s": {f"p{q}": round(float(np.percentile(latencies, q)), 3) for q in (50, 90, 95, 99)}
        if len(latencies) else {},
        "server_queue": health["queue"],
    }


def start_server(model: str, args, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "ip2p", "serve", "--no-ui", "--model", model, "--port", str(port),
               "--resolution", str(args.size), "--max-queue", str(args.max_queue),
               "--concurrency", str(args.concurrency), *extra]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE), url


def wait_ready(server: subprocess.Popen, url: str) -> bool:
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            print(server.stderr.read().decode() if server.poll() is not None else "server did not start",
                  file=sys.stderr)
            return False
        time.sleep(0.5)


def markdown(runs: list[dict]) -> str:
    lines = ["| batching | clients | requests | images/s | p50 s | p95 s | failed | 429s | UNet batches | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        queue = r["server_queue"]
        batches = queue.get("batches_this_run", 0)
        mean = f"{queue.get('batched_this_run', 0) / batches:.2f}" if batches else "1 (off)"
        lines.append(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['throughput_per_s']} | "
                     f"{r['latency_s'].get('p50', '-')} | {r['latency_s'].get('p95', '-')} | {r['failed']} | "
                     f"{r['throttled_429']} | {batches or '-'} | {mean} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="50", help="concurrent clients; a comma list runs each in turn")
    parser.add_argument("--requests", type=int, default=500, help="requests per run")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (also the working resolution)")
    parser.add_argument("--model", default=None, help="default: bundled demo, else a tiny random model")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch (default: its own)")
    parser.add_argument("--batch-wait-ms", type=float, default=None)
    parser.add_argument("--compare-batching", action="store_true",
                        help="two servers, batching off (--max-batch 1) and on, measured alternately")
    parser.add_argument("--with-exact", action="store_true",
                        help="with --compare-batching, a third server with --exact-batches (padded batches)")
    parser.add_argument("--reps", type=int, default=1, help="rounds over every configuration (alternating)")
    parser.add_argument("--threads", type=int, default=None, help="the servers' --threads")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table on stderr")
    args = parser.parse_args()
    clients = [int(c) for c in str(args.clients).split(",") if c]

    on = ["--max-batch", str(args.max_batch or 8)] if args.compare_batching or args.max_batch else []
    if args.batch_wait_ms is not None:
        on += ["--batch-wait-ms", str(args.batch_wait_ms)]
    configs = {"off": ["--max-batch", "1"], "on": on} if args.compare_batching else {"server": on}
    if args.compare_batching and args.with_exact:
        configs["exact"] = [*on, "--exact-batches"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or pick_model(Path(tmp))
        servers = {name: start_server(model, args, extra) for name, extra in configs.items()}
        try:
            if not all(wait_ready(*servers[name]) for name in servers):
                return 1
            images = test_images(16, args.size)
            fields = {"instruction": "make it blue", "steps": str(args.steps)}
            for url in (u for _, u in servers.values()):  # one warm-up edit each (first-call costs)
                asyncio.run(run_load(url, 1, 1, images, fields))
            for rep in range(args.reps):
                for count in clients:
                    for name, (_, url) in servers.items():
                        before = httpx.get(url + "/health").json()["queue"]
                        summary = asyncio.run(run_load(url, count, args.requests, images, fields))
                        queue = summary["server_queue"]
                        for key in ("batches", "batched"):
                            queue[f"{key}_this_run"] = queue.get(key, 0) - before.get(key, 0)
                        summary.update(batching=name, rep=rep)
                        runs.append(summary)
                        print(f"{name} {count} clients: {summary['throughput_per_s']} images/s, "
                              f"p50 {summary['latency_s'].get('p50')} s", file=sys.stderr, flush=True)
        finally:
            for server, _ in servers.values():
                server.terminate()
            for server, _ in servers.values():
                server.wait(timeout=60)
    import diffusers
    import torch
    import transformers

    from ip2p.version import __version__

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "runs": runs,
        "model": "bundled demo" if model == "demo" else (model if args.model else "tiny random-weight model"),
        "steps": args.steps, "image": f"{args.size}x{args.size}", "max_batch": args.max_batch or 8,
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {"ip2p": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "load_average_end": load,
    }
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(runs), file=sys.stderr)
    return 0 if all(r["failed"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
