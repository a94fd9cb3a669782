"""Request batching: ``Editor.edit_batch`` and the server's ``EditQueue.run_batched``, over real HTTP
against uvicorn on a loopback port with the tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from ip2p.cli import main
from ip2p.errors import BadOptions
from ip2p.options import EditOptions
from ip2p.server import BackgroundServer, ServerSettings, create_app
from ip2p.tiny import gradient_image

ONE_ROW = {"text_cfg": "1", "image_cfg": "1"}  # one UNet row per output: the quickest edit


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def health(c: httpx.Client) -> dict:
    return c.get("/health").json()["queue"]


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def post_in_background(c: httpx.Client, box: dict, key: str, image: bytes, fields: dict, rid: str | None = None):
    headers = {"X-Request-Id": rid} if rid else {}

    def send():
        box[key] = c.post("/v1/edit", files={"image": ("p.png", image, "image/png")}, data=fields, headers=headers)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------------
# Editor.edit_batch


def close(x: Image.Image, y: Image.Image) -> bool:
    """Equal up to float rounding: kernels pick their algorithm by batch shape (at most 1/255)."""
    return int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) <= 1


def test_edit_batch_records_what_each_request_alone_records(tiny_editor):
    a, b = gradient_image(64, 32, seed=4), gradient_image(48, 64, seed=5)
    common = dict(steps=2, resolution=64)
    requests = [
        (a, "make it blue", EditOptions(seed=5, **common)),
        (b.resize((64, 32)), "make it red", EditOptions(seed=9, num_images=2, negative_prompt="blurry", **common)),
        (a, "make it blue", EditOptions(seed=6, keep_working_size=True, **common)),
    ]
    before = dict(tiny_editor.stats)
    batched = tiny_editor.edit_batch(requests)
    assert tiny_editor.stats["unet_batches"] - before["unet_batches"] == 1  # four outputs, one UNet batch
    for (image, instruction, options), result in zip(requests, batched, strict=True):
        alone = tiny_editor.edit_with([image], instruction, options)
        assert len(result.images) == options.num_images
        assert result.params == alone.params  # seeds, sizes, model defaults: what the request alone records
        assert all(close(x, y) for x, y in zip(alone.images, result.images, strict=True))
    # the two requests with one instruction but other seeds got other pictures
    assert not close(batched[0].image, batched[2].image)
    with pytest.raises(BadOptions, match="cannot share a UNet batch"):
        tiny_editor.edit_batch([(a, "x", EditOptions(seed=1, **common)), (a, "x", EditOptions(seed=1, steps=3))])
    assert tiny_editor.batch_key(a, EditOptions(seed=1, **common)) != tiny_editor.batch_key(
        a, EditOptions(seed=1, steps=2, resolution=64, guidance_scale=2.0))


def test_padded_batches_make_each_output_independent_of_its_neighbours(tiny_editor):
    a = gradient_image(64, 32, seed=4)
    mine = (a, "make it blue", EditOptions(seed=5, steps=2, resolution=64))
    others = [(gradient_image(64, 32, seed=s), w, EditOptions(seed=s, steps=2, resolution=64, num_images=n))
              for s, w, n in ((7, "add snow", 2), (8, "make it red", 1))]
    alone = tiny_editor.edit_batch([mine], pad_to=4)[0]
    first = tiny_editor.edit_batch([mine, *others], pad_to=4)[0]  # rows 0 of 4
    last = tiny_editor.edit_batch([*others, mine], pad_to=4)[-1]  # row 3 of 4
    spilled = tiny_editor.edit_batch([others[0], others[0], mine], pad_to=4)[-1]  # row 4: the second batch
    for result in (first, last, spilled):
        assert result.params == alone.params
        assert np.array_equal(np.asarray(result.image), np.asarray(alone.image))
    assert close(alone.image, tiny_editor.edit_with([a], *mine[1:]).image)


# ------------------------------------------------------------------------------------------------
# The server


async def _burst(url: str, bodies: list[tuple[bytes, dict]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        return await asyncio.gather(*(c.post("/v1/edit", files={"image": ("p.png", image, "image/png")}, data=fields)
                                      for image, fields in bodies))


def _group_requests(photos: list[bytes]) -> list[tuple[bytes, dict]]:
    """Five requests that can share a batch: other instructions, seeds, negative prompts, n."""
    words = ["make it blue", "make it red", "add snow", "make it blue", "turn it green"]
    return [(photos[i % len(photos)], {"instruction": words[i], "seed": str(10 + i), "steps": "3",
                                       "negative_prompt": "blurry" if i == 2 else "", "n": "2" if i == 1 else "1",
                                       **ONE_ROW}) for i in range(5)]


def test_batched_answers_equal_serial_ones(tiny_editor):
    photos = [png(gradient_image(64, 32, seed=s)) for s in (1, 2, 3)]
    bodies = _group_requests(photos)
    answers: dict[str, list] = {}
    for mode, settings in (("exact", ServerSettings(ui=False, default_resolution=64, max_batch=8, exact_batches=True)),
                           ("off", ServerSettings(ui=False, default_resolution=64, max_batch=1))):
        with BackgroundServer(create_app(tiny_editor, settings)) as running, \
                httpx.Client(base_url=running.url, timeout=600) as c:
            # a long edit holds the device, so the five gather behind it and go as one batch
            box: dict = {}
            blocker = post_in_background(c, box, "blocker", photos[0], {"instruction": "x", "steps": "1000"},
                                         rid="blocker")
            wait_for(lambda: health(c)["running"] == 1, what="the blocker to start")
            responses: list = []
            sender = threading.Thread(target=lambda out=responses, url=running.url: out.extend(
                asyncio.run(_burst(url, bodies))))
            sender.start()
            wait_for(lambda: health(c)["waiting"] == 5, what="five requests to wait")
            assert c.post("/v1/cancel/blocker").status_code == 200
            sender.join(timeout=600)
            blocker.join(timeout=60)
            assert box["blocker"].status_code == 409
            assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
            state = health(c)
            answers[mode] = [r.json()["images"] for r in responses]
            if mode == "exact":
                assert (state["batches"], state["batched"]) == (2, 6)  # the blocker, then the five together
                # the same requests one at a time: each alone in its (padded) batch
                answers["alone"] = [c.post("/v1/edit", files={"image": ("p.png", image, "image/png")},
                                           data=fields).json()["images"] for image, fields in bodies]
                assert health(c)["batches"] == 7
            else:
                assert (state["batches"], state["batched"]) == (0, 0)
    for exact, alone, off in zip(answers["exact"], answers["alone"], answers["off"], strict=True):
        assert len(exact) == len(alone) == len(off)
        for x, y, z in zip(exact, alone, off, strict=True):
            assert x["params"] == y["params"] == z["params"]
            assert np.array_equal(pixels(x["b64_json"]), pixels(y["b64_json"]))  # to the bit
            assert int(np.abs(pixels(x["b64_json"]).astype(int) - pixels(z["b64_json"])).max()) <= 1


def test_batching_keeps_queue_limits_and_cancels_per_request(tiny_editor):
    photo = png(gradient_image(32, 32, seed=7))
    settings = ServerSettings(ui=False, default_resolution=32, max_queue=3, max_batch=8, batch_wait_ms=10)
    quick = {"instruction": "make it blue", "steps": "2", **ONE_ROW}
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=600) as c:
        box: dict = {}
        blocker = post_in_background(c, box, "blocker", photo, {"instruction": "x", "steps": "1000"}, rid="blocker")
        wait_for(lambda: health(c)["running"] == 1, what="the blocker to start")
        threads = [post_in_background(c, box, f"w{i}", photo, {**quick, "seed": str(i)}, rid=f"w{i}") for i in range(3)]
        wait_for(lambda: health(c)["waiting"] == 3, what="three requests to wait")
        busy = c.post("/v1/edit", files={"image": ("p.png", photo, "image/png")}, data=quick)
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        assert "server busy" in busy.json()["error"]["message"]

        # a waiting request leaves its group (409); the others stay in it
        assert c.post("/v1/cancel/w1").json()["state"] == "waiting"
        threads[1].join(timeout=60)
        assert box["w1"].status_code == 409 and box["w1"].json()["error"]["code"] == "cancelled"
        wait_for(lambda: health(c)["waiting"] == 2, what="w1 to leave the line")

        c.post("/v1/cancel/blocker")
        for thread in (blocker, threads[0], threads[2]):
            thread.join(timeout=600)
        assert box["blocker"].status_code == 409
        assert box["w0"].status_code == 200 and box["w2"].status_code == 200
        wait_for(lambda: health(c)["running"] == 0, timeout=30, what="the device to be free")
        state = health(c)
        assert (state["waiting"], state["rejected"], state["cancelled"]) == (0, 1, 2)
        assert (state["batches"], state["batched"]) == (2, 3)  # the blocker, then w0 and w2 together
        alone = c.post("/v1/edit", files={"image": ("p.png", photo, "image/png")}, data={**quick, "seed": "2"})
        difference = pixels(alone.json()["images"][0]["b64_json"]).astype(int) - pixels(
            box["w2"].json()["images"][0]["b64_json"])
        assert np.abs(difference).max() <= 1  # float rounding only (batches of 1 and 2)


def test_a_running_batch_goes_on_when_one_of_its_requests_is_cancelled(tiny_editor):
    photo = png(gradient_image(32, 32, seed=8))
    settings = ServerSettings(ui=False, default_resolution=32, max_batch=8, batch_wait_ms=2000)
    long = {"instruction": "make it blue", "steps": "60", **ONE_ROW}
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=600) as c:
        box: dict = {}
        first = post_in_background(c, box, "a", photo, {**long, "seed": "1"}, rid="a")
        second = post_in_background(c, box, "b", photo, {**long, "seed": "2"}, rid="b")
        wait_for(lambda: health(c)["running"] == 2, what="both to run as one batch")
        assert c.post("/v1/cancel/a").json()["state"] == "running"
        first.join(timeout=60)
        assert box["a"].status_code == 409
        second.join(timeout=600)
        assert box["b"].status_code == 200, box["b"].text
        state = health(c)
        assert (state["batches"], state["cancelled"], state["done"]) == (1, 1, 1)
        alone = c.post("/v1/edit", files={"image": ("p.png", photo, "image/png")}, data={**long, "seed": "2"})
    assert alone.json()["images"][0]["params"] == box["b"].json()["images"][0]["params"]
    difference = pixels(alone.json()["images"][0]["b64_json"]).astype(int) - pixels(box["b"].json()["images"][0]["b64_json"])
    assert np.abs(difference).max() <= 1  # batches of 2 and 1: float rounding only


def test_a_burst_of_64_requests_is_served_in_batches(tiny_editor):
    photos = [png(gradient_image(32, 32, seed=s)) for s in range(4)]
    settings = ServerSettings(ui=False, default_resolution=32, max_queue=64, max_batch=8, exact_batches=True)
    # request i: photo i % 4, seed i % 4; so each of the four (photo, seed) pairs comes 16 times,
    # batched with different neighbours each time
    bodies = [(photos[i % 4], {"instruction": "make it blue", "seed": str(i % 4), "steps": "2", **ONE_ROW})
              for i in range(64)]
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=60) as c:
        responses = asyncio.run(_burst(running.url, bodies))
        state = health(c)
    assert [r.status_code for r in responses] == [200] * 64, {r.status_code: r.text for r in responses}
    assert (state["done"], state["rejected"], state["running"], state["waiting"], state["batched"]) == (64, 0, 0, 0, 64)
    assert state["batches"] < 64  # they shared UNet batches
    first: dict[int, np.ndarray] = {}
    for i, response in enumerate(responses):
        image = response.json()["images"][0]
        assert image["params"]["seed"] == i % 4
        picture = pixels(image["b64_json"])
        assert picture.shape == (32, 32, 3)
        assert np.array_equal(picture, first.setdefault(i % 4, picture))  # whatever it was batched with
    assert len({first[k].tobytes() for k in first}) == 4


@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms must be between 0 and 10000"),
])
def test_serve_batching_flags_are_checked_before_loading(capsys, argv, needle):
    assert main(["serve", "--model", "/nonexistent/model", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
