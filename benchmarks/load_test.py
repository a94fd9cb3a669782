"""Load test for ``ip2p serve``: many concurrent clients against a server on loopback.

Starts ``python -m ip2p serve --no-ui`` as a subprocess on a free port (the bundled demo model when
installed, otherwise a tiny random-weight model written to a temporary folder), then runs
``--clients`` concurrent clients that send ``--requests`` edits in total to ``POST /v1/edit`` with
small images and few steps. A 429 is the server's deliberate back-pressure: the client waits the
``Retry-After`` it was given and tries again; it is counted, not failed. Everything else that is not
a 200 with a decodable image is a failure.

Prints a JSON summary: throughput (edits/s), latency p50/p90/p99 (seconds, send to answer, queue
wait included), failures, 429s, the model and the date.

    python benchmarks/load_test.py                      # 50 clients, 500 requests
    python benchmarks/load_test.py --clients 8 --requests 40 --steps 2
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
                                                                          "image/png")}, data=fields)
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
        "latency_s": {f"p{q}": round(float(np.percentile(latencies, q)), 2) for q in (50, 90, 99)}
        if len(latencies) else {},
        "server_queue": health["queue"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (also the working resolution)")
    parser.add_argument("--model", default=None, help="default: bundled demo, else a tiny random model")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or pick_model(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        server = subprocess.Popen(
            [sys.executable, "-m", "ip2p", "serve", "--no-ui", "--model", model, "--port", str(port),
             "--resolution", str(args.size), "--max-queue", str(args.max_queue),
             "--concurrency", str(args.concurrency)], env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    print(server.stderr.read().decode(), file=sys.stderr)
                    return 1
                time.sleep(0.5)
            fields = {"instruction": "make it blue", "steps": str(args.steps), "seed": "0"}
            summary = asyncio.run(run_load(url, args.clients, args.requests, test_images(16, args.size), fields))
        finally:
            server.terminate()
            server.wait(timeout=60)
    summary.update({
        "model": "bundled demo" if model == "demo" else (model if args.model else "tiny random-weight model"),
        "steps": args.steps, "image": f"{args.size}x{args.size}",
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    })
    print(json.dumps(summary, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
