"""The web UI: its handlers on a real tiny model, and a real headless Chromium driving the page."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import gradient_image
from PIL import Image

from ip2p.errors import BadOptions
from ip2p.images import read_params
from ip2p.options import EditOptions
from ip2p.ui import edit_many, edit_one, guidance_grid, make_options, parse_scales

CHROMIUM = "/usr/bin/chromium"
FAST = EditOptions(steps=2, guidance_scale=1.0, image_guidance_scale=1.0, seed=3, resolution=64)


def test_options_from_widgets():
    fixed = make_options(7.5, 1.5, 10, 42.0, False, "ddim", 64)
    assert (fixed.seed, fixed.steps, fixed.scheduler) == (42, 10, "ddim")
    assert make_options(7.5, 1.5, 10, 42, True, "ddim", 64).seed != make_options(7.5, 1.5, 10, 42, True, "ddim", 64).seed
    with pytest.raises(BadOptions, match="unknown scheduler"):
        make_options(7.5, 1.5, 10, 1, False, "warp", 64)


def test_edit_one_and_many(tiny_editor, tmp_path):
    picture = gradient_image(64, 32)
    result = edit_one(tiny_editor, picture, "make it blue", FAST)
    assert result.image.size == (64, 32) and result.params[0]["seed"] == 3
    with pytest.raises(BadOptions, match="upload or paste an image"):
        edit_one(tiny_editor, None, "make it blue", FAST)
    with pytest.raises(BadOptions, match="write an instruction"):
        edit_one(tiny_editor, picture, "  ", FAST)

    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"p{i}.png"))
        gradient_image(64, 32, seed=i).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"nope")
    result, names, problems = edit_many(tiny_editor, [*paths, str(tmp_path / "broken.png")], "make it blue", FAST)
    assert names == ["p0.png", "p1.png"] and len(result.images) == 2
    assert len(problems) == 1 and "broken.png" in problems[0]
    alone = edit_one(tiny_editor, Image.open(paths[1]), "make it blue", FAST).image
    assert not np.array_equal(np.asarray(alone), np.asarray(picture))


def test_guidance_grid_is_labelled_and_each_cell_is_its_own_edit(tiny_editor):
    picture = gradient_image(64, 64)
    options = EditOptions(steps=2, seed=1, resolution=64)
    grid, params = guidance_grid(tiny_editor, picture, "make it blue", options, [1.0, 4.0], [1.0, 2.0])
    assert params["grid_text_scales"] == [1.0, 4.0] and params["grid_image_scales"] == [1.0, 2.0]
    width, height = grid.size
    assert width > 2 * 64 and height > 2 * 64
    pixels = np.asarray(grid.convert("L"))
    left, top = width - 2 * (64 + 4), height - 2 * (64 + 4)
    assert (pixels[:top] < 128).any() and (pixels[top:, :left] < 128).any()  # text labels drawn in the margins
    cells = [np.asarray(grid.crop((left + c * 68, top + r * 68, left + c * 68 + 64, top + r * 68 + 64)))
             for r in range(2) for c in range(2)]
    one = tiny_editor.edit(picture, "make it blue", steps=2, seed=1, resolution=64, guidance_scale=4.0,
                           image_guidance_scale=2.0).image
    assert np.array_equal(cells[3], np.asarray(one))  # bottom right: s_T = 4, s_I = 2
    assert len({c.tobytes() for c in cells}) == 4
    with pytest.raises(BadOptions, match="not a number"):
        parse_scales("1, lots", "How much to change")


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
def test_browser_upload_edit_chain_and_undo(tiny_editor, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    from ip2p.server import BackgroundServer, ServerSettings, create_app

    source = tmp_path / "photo.png"
    gradient_image(64, 32, seed=9).save(source)
    app = create_app(tiny_editor, ServerSettings(default_resolution=64))
    outside: list[str] = []
    with BackgroundServer(app) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()

        def guard(route):
            url = route.request.url
            if url.startswith((server.url, "data:", "blob:")):
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        page.route("**/*", guard)
        page.goto(server.url + "/")
        page.wait_for_selector("#edit-button", timeout=60_000)
        page.locator("#source-image input[type=file]").set_input_files(str(source))
        page.wait_for_selector("#source-image img", timeout=30_000)
        page.locator("#instruction textarea").fill("make it blue")
        page.locator("#edit-button").click()
        page.wait_for_function("document.querySelectorAll('#result-slider img').length >= 2", timeout=120_000)

        def fetch(url: str) -> bytes:
            return page.request.get(url).body()

        before_src, after_src = page.eval_on_selector_all("#result-slider img", "els => els.map(e => e.src)")[:2]
        before = np.asarray(Image.open(io.BytesIO(fetch(before_src))).convert("RGB"), dtype=float)
        after = np.asarray(Image.open(io.BytesIO(fetch(after_src))).convert("RGB"), dtype=float)
        assert before.shape == after.shape == (32, 64, 3)
        assert np.abs(before - np.asarray(Image.open(source), dtype=float)).max() <= 1  # the upload itself
        assert np.abs(after - before).mean() > 5  # a real, different result

        link = page.locator("#download a").first.get_attribute("href")
        download = fetch(link if link.startswith("http") else server.url + link)
        params = read_params(download)
        assert params["instruction"] == "make it blue" and params["resolution"] == 64
        assert str(params["seed"]) in page.locator("#params").inner_text()  # full parameters shown

        page.locator("#again-button").click()  # the result becomes the new input, the old one goes to history
        page.wait_for_function("document.querySelectorAll('#history img').length >= 1", timeout=60_000)
        page.wait_for_timeout(500)
        chained = page.locator("#source-image img").first.get_attribute("src")
        chained_px = np.asarray(Image.open(io.BytesIO(fetch(chained))).convert("RGB"), dtype=float)
        assert np.abs(chained_px - after).max() <= 1
        page.locator("#undo-button").click()
        page.wait_for_function("document.querySelectorAll('#history img').length == 0", timeout=60_000)
        page.wait_for_timeout(500)
        restored = page.locator("#source-image img").first.get_attribute("src")
        restored_px = np.asarray(Image.open(io.BytesIO(fetch(restored))).convert("RGB"), dtype=float)
        assert np.abs(restored_px - before).max() <= 1
        browser.close()
    assert outside == [], f"the page tried to reach other hosts: {outside}"
