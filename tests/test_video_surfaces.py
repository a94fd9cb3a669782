"""A short video through the surfaces: ``POST /v1/video`` over real HTTP (uvicorn on loopback, the
tiny model), its limits (413), and the web UI's Video tab through its handler and its layout."""

from __future__ import annotations

import base64
from fractions import Fraction

import httpx
import pytest

from ip2p.errors import BadOptions, ImageTooLarge
from ip2p.options import EditOptions
from ip2p.server import BackgroundServer, ServerSettings, create_app
from ip2p.video import Video, read_video, video_bytes

pytest.importorskip("av")
FAST = {"steps": "2", "resolution": "32", "seed": "4"}


@pytest.fixture(scope="module")
def clip():
    from ip2p.shapes.animate import make_clip

    return make_clip(2, frames=6, size=64, kinds=["darken"])


@pytest.fixture(scope="module")
def gif(clip) -> bytes:
    return video_bytes(Video(clip.inputs(), Fraction(12)), "gif")


@pytest.fixture(scope="module")
def server(tiny_editor):
    settings = ServerSettings(ui=False, max_video_frames=8, max_request_bytes=300_000)
    with BackgroundServer(create_app(tiny_editor, settings)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def one_line_error(response, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    assert "\n" not in response.text
    assert needle in response.json()["error"]["message"], response.text


def test_server_edits_a_short_video_and_keeps_its_rate(client, gif, clip):
    def call():
        response = client.post("/v1/video", files={"video": ("in.gif", gif, "image/gif")},
                               data={"instruction": clip.instruction, "consistency": "attention", **FAST})
        assert response.status_code == 200, response.text
        return response.json()

    body = call()
    assert body["video"]["format"] == "mp4" and body["video"]["frames"] == 6 and body["video"]["fps"] == 12
    edited = read_video(base64.b64decode(body["video"]["b64_json"]))
    assert len(edited.frames) == 6 and edited.fps == 12 and edited.size == (64, 64)
    assert body["params"]["seed"] == 4 and body["params"]["video"]["anchor"] == "first"
    assert body["report"]["flicker_ratio"] is not None
    assert call()["video"]["b64_json"] == body["video"]["b64_json"]  # same seed, same video
    as_json = client.post("/v1/video", json={"video": base64.b64encode(gif).decode(), "instruction": "x",
                                             "format": "gif", **FAST})
    assert as_json.status_code == 200, as_json.text
    assert len(read_video(base64.b64decode(as_json.json()["video"]["b64_json"])).frames) == 6


def test_server_refuses_videos_past_its_limits_with_413(client, clip):
    long = video_bytes(Video(clip.inputs() * 2, Fraction(12)), "mp4")  # 12 frames > 8
    response = client.post("/v1/video", files={"video": ("long.mp4", long, "video/mp4")},
                           data={"instruction": "x", **FAST})
    one_line_error(response, 413, "over the limit of 8")
    assert response.json()["error"]["param"] == "video"
    huge = client.post("/v1/video", files={"video": ("big.mp4", b"\0" * 400_000, "video/mp4")},
                       data={"instruction": "x"})
    one_line_error(huge, 413, "request body too large")


def test_server_video_bad_requests_are_one_line(client, gif):
    cases = [({"video": ("x.mp4", b"not a video" * 20, "video/mp4")}, {"instruction": "x"}, 400, "not a video file"),
             ({"video": ("in.gif", gif, "image/gif")}, {}, 422, "instruction is missing"),
             ({"video": ("in.gif", gif, "image/gif")}, {"instruction": "x", "consistency": "magic"}, 422,
              "--consistency must be one of"),
             ({"video": ("in.gif", gif, "image/gif")}, {"instruction": "x", "format": "avi"}, 422, "format must be"),
             ({"image": ("in.gif", gif, "image/gif")}, {"instruction": "x"}, 400, "field 'video'")]
    for files, data, status, needle in cases:
        one_line_error(client.post("/v1/video", files=files, data=data), status, needle)


def test_ui_video_handler_writes_an_mp4_and_applies_the_limit(tiny_editor, tmp_path, gif):
    from ip2p.ui_video import edit_video_file

    source = tmp_path / "in.gif"
    source.write_bytes(gif)
    options = EditOptions(steps=2, seed=1, resolution=32)
    seen = []
    path, report = edit_video_file(tiny_editor, str(source), "make it night", options, tmp_path,
                                   consistency="noise", step=lambda i, n: seen.append(i))
    edited = read_video(path)
    assert len(edited.frames) == 6 and edited.fps == 12 and report["consistency"] == "noise" and seen
    with pytest.raises(ImageTooLarge, match="over the limit of 4"):
        edit_video_file(tiny_editor, str(source), "x", options, tmp_path, limits={"video_frames": 4})
    with pytest.raises(BadOptions, match="upload a video first"):
        edit_video_file(tiny_editor, None, "x", options, tmp_path)


def test_ui_has_a_video_tab_wired_to_the_editor_queue(tiny_editor):
    gr = pytest.importorskip("gradio")
    from ip2p.ui import build_ui

    demo = build_ui(tiny_editor, EditOptions(resolution=64))
    ids = {b.elem_id: b._id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"video-input", "video-button", "video-result", "video-report"} <= set(ids)
    assert any(isinstance(b, gr.Tab) and b.label == "Video" for b in demo.blocks.values())
    runs = [dep for dep in demo.config["dependencies"] if ids["video-result"] in dep["outputs"]]
    assert len(runs) == 1 and runs[0]["show_progress_on"] == [ids["video-result"]]
