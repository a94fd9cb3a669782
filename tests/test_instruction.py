"""An empty or blank instruction is refused in one line on every surface, before any model work."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import httpx
import pytest

from ip2p.errors import BadOptions
from ip2p.tiny import gradient_image

BLANKS = ["", "   "]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("blank", BLANKS)
def test_editor_refuses_before_model_work(tiny_editor, picture, blank):
    before = dict(tiny_editor.stats)
    with pytest.raises(BadOptions, match="empty") as caught:
        tiny_editor.edit(picture, blank, steps=2, seed=0)
    assert "\n" not in str(caught.value)
    assert tiny_editor.stats == before  # no text, image or UNet work was done


@pytest.mark.parametrize("blank", BLANKS)
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, blank):
    source = tmp_path / "in.png"
    gradient_image(32, 32).save(source)
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "ip2p", "edit", str(source), "-i", blank, "-o", str(out),
                          "--model", str(tiny_model_dir), "--steps", "2"],
                         capture_output=True, env=ENV, timeout=600)
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "empty" in stderr, stderr
    assert not out.exists()


def test_batch_records_a_blank_row_as_failed(tmp_path, tiny_model_dir):
    from ip2p.cli import main

    (tmp_path / "in").mkdir()
    gradient_image(32, 32, seed=1).save(tmp_path / "in" / "a.png")
    gradient_image(32, 32, seed=2).save(tmp_path / "in" / "b.png")
    table = tmp_path / "list.jsonl"
    table.write_text(json.dumps({"image": "in/a.png", "instruction": "   "}) + "\n"
                     + json.dumps({"image": "in/b.png", "instruction": "make it blue"}) + "\n")
    out = tmp_path / "out"
    code = main(["batch", str(table), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "1",
                 "--text-cfg", "1", "--image-cfg", "1", "--resolution", "32", "-q"])
    assert code == 1  # one item failed, the other was done
    records = {r["input"].split("in/")[-1]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert records["a.png"]["status"] == "failed" and "\n" not in records["a.png"]["error"]
    assert records["b.png"]["status"] == "ok"


@pytest.fixture(scope="module")
def client(tiny_editor):
    from ip2p.server import BackgroundServer, ServerSettings, create_app

    settings = ServerSettings(ui=False, default_resolution=32)
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=120) as c:
        yield c


@pytest.mark.parametrize("blank", BLANKS)
@pytest.mark.parametrize("endpoint,field", [("/v1/edit", "instruction"), ("/v1/images/edits", "prompt")])
def test_server_answers_4xx_json(client, tiny_editor, endpoint, field, blank):
    before = dict(tiny_editor.stats)
    response = client.post(endpoint, files={"image": ("p.png", png_bytes(gradient_image(32, 32)), "image/png")},
                           data={field: blank, "steps": "2"})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]["message"]
    assert "empty" in message and "\n" not in message
    assert tiny_editor.stats == before
