"""``ip2p serve``: real HTTP against uvicorn on a loopback port, a real tiny model, the real openai client."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import gradient_image
from PIL import Image

from ip2p.images import read_params
from ip2p.server import BackgroundServer, ServerSettings, create_app

FAST = {"steps": "2", "text_cfg": "1", "image_cfg": "1"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return png_bytes(gradient_image(64, 32, seed=4))


@pytest.fixture(scope="module")
def server(tiny_editor):
    settings = ServerSettings(ui=False, default_resolution=64, max_pixels=100_000, max_request_bytes=200_000)
    with BackgroundServer(create_app(tiny_editor, settings)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def assert_one_line_error(response, status: int, needle: str):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "\n" not in response.text
    message = response.json()["error"]["message"]
    assert needle in message, message


def test_health_models_and_openapi(client, tiny_editor):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == tiny_editor.model_name
    assert health["queue"]["concurrency"] == 1
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == tiny_editor.model_name
    spec = client.get("/openapi.json").json()
    assert {"/v1/images/edits", "/v1/edit", "/v1/models", "/health"} <= set(spec["paths"])
    fields = spec["paths"]["/v1/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "instruction", "image_guidance_scale", "scheduler"} <= set(fields["properties"])
    assert client.get("/docs").status_code == 200


def test_native_multipart_edit_is_real_and_deterministic(client, photo):
    def call():
        response = client.post("/v1/edit", files={"image": ("p.png", photo, "image/png")},
                               data={"instruction": "make it blue", "seed": "11", "scheduler": "ddim", **FAST})
        assert response.status_code == 200, response.text
        return response.json()["images"][0]

    first, second = call(), call()
    assert first["b64_json"] == second["b64_json"]
    assert first["params"]["seed"] == 11 and first["params"]["scheduler"] == "ddim"
    image = decode(first["b64_json"])
    assert image.size == (64, 32)
    assert read_params(base64.b64decode(first["b64_json"]))["instruction"] == "make it blue"
    before = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - before).mean() > 5


def test_native_json_with_aliases_and_variations(client, photo):
    body = {"image": "data:image/png;base64," + base64.b64encode(photo).decode(), "prompt": "make it red",
            "n": 2, "seed": 5, "num_inference_steps": 2, "cfg_text": 1, "image_cfg": 1, "format": "webp"}
    response = client.post("/v1/edit", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [i["params"]["seed"] for i in images] == [5, 6]
    assert all(decode(i["b64_json"]).format == "WEBP" for i in images)


@pytest.mark.parametrize("kwargs,status,needle", [
    ({"data": {"instruction": "x"}}, 400, "no image"),
    ({"files": {"image": ("x.png", b"hello", "image/png")}, "data": {"instruction": "x"}}, 400, "not an image"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (400, 300))), "image/png")},
      "data": {"instruction": "x"}}, 413, "over the limit"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": "x", "steps": "lots"}}, 422, "steps must be an integer"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": "x", "image_cfg": "-1"}}, 422, "image_guidance_scale must be between"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": "x", "scheduler": "warp"}}, 422, "unknown scheduler 'warp'"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": "x", "colour": "red"}}, 422, "unknown option 'colour'"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": ""}}, 422, "instruction (prompt) is missing"),
    ({"files": {"image": ("x.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")},
      "data": {"instruction": "x", "n": "9"}}, 422, "at most 4 on this server"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ({"json": {"image": "%%%", "instruction": "x"}}, 400, "not valid base64"),
    ({"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413, "too large"),
])
def test_native_bad_inputs_get_one_line_errors(client, kwargs, status, needle):
    assert_one_line_error(client.post("/v1/edit", **kwargs), status, needle)


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    response = client.post("/v1/edit", content=chunks(), headers={"content-type": "application/json"})
    assert_one_line_error(response, 413, "too large")


def test_unknown_endpoint_is_a_json_404(client):
    assert_one_line_error(client.get("/v1/nothing"), 404, "no such endpoint")


def test_openai_client(server, photo, tiny_editor):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="not-checked", max_retries=0)
    assert [m.id for m in api.models.list().data] == [tiny_editor.model_name]
    result = api.images.edit(image=("p.png", photo, "image/png"), prompt="make it blue", n=2, size="64x64",
                             response_format="b64_json", extra_body={"steps": 2, "seed": 3})
    assert len(result.data) == 2
    pictures = [decode(d.b64_json) for d in result.data]
    assert pictures[0].size == (64, 32) and result.size == "64x32"
    assert not np.array_equal(np.asarray(pictures[0]), np.asarray(pictures[1]))  # seeds 3 and 4
    with pytest.raises(openai.BadRequestError, match="response_format 'url' is not supported"):
        api.images.edit(image=("p.png", photo, "image/png"), prompt="x", response_format="url")
    with pytest.raises(openai.BadRequestError, match="mask is not supported"):
        api.images.edit(image=("p.png", photo, "image/png"), prompt="x", mask=("m.png", photo, "image/png"))
    with pytest.raises(openai.NotFoundError, match="not served here"):
        api.images.edit(image=("p.png", photo, "image/png"), prompt="x", model="dall-e-2")


def test_full_queue_answers_429_with_retry_after(tiny_editor, photo):
    settings = ServerSettings(ui=False, default_resolution=64, max_queue=0)
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=300) as c:
        slow: dict = {}
        thread = threading.Thread(target=lambda: slow.update(r=c.post(
            "/v1/edit", files={"image": ("p.png", photo, "image/png")},
            data={"instruction": "make it blue", "steps": "40"})))
        thread.start()
        deadline = time.monotonic() + 60
        while c.get("/health").json()["queue"]["running"] == 0:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.05)
        busy = c.post("/v1/edit", files={"image": ("p.png", photo, "image/png")}, data={"instruction": "x", **FAST})
        assert_one_line_error(busy, 429, "server busy")
        assert int(busy.headers["retry-after"]) >= 1
        thread.join(timeout=300)
        assert slow["r"].status_code == 200
        assert c.get("/health").json()["queue"]["rejected"] == 1


def test_api_key_guards_everything_but_health_including_the_ui(tiny_editor, photo):
    settings = ServerSettings(api_key="s3cret", default_resolution=64, ui=True)
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=120) as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/models", "/openapi.json", "/"):
            assert_one_line_error(c.get(path), 401, "API key")
        assert_one_line_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        response = c.post("/v1/edit", headers={"Authorization": "Bearer s3cret"},
                          files={"image": ("p.png", photo, "image/png")}, data={"instruction": "x", **FAST})
        assert response.status_code == 200
        page = c.get("/?api_key=s3cret")  # a browser's way in: sets an HttpOnly cookie for the UI's calls
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "ip2p_api_key=s3cret" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
        assert c.get("/v1/models").status_code == 200  # the client now carries the cookie
