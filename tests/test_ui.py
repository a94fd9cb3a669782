"""The web UI: its handlers on a real tiny model, and a real headless Chromium driving the page."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ip2p.errors import BadImage, BadOptions, Cancelled
from ip2p.images import read_params, save_image
from ip2p.options import BY_NAME, EditOptions
from ip2p.tiny import gradient_image
from ip2p.ui import (
    IMAGE_LABEL,
    MASK_MODES,
    TEXT_LABEL,
    Outcome,
    Scratch,
    StopFlags,
    again,
    cache_shown_images_atomically,
    choose_mask,
    edit_many,
    edit_one,
    example_pictures,
    guidance_grid,
    history_view,
    make_options,
    mask_from_brush,
    outcome_of,
    parse_scales,
    result_view,
    reuse_seed,
    settings_from_params,
    starting_values,
    stoppable,
    undo,
)

CHROMIUM = "/usr/bin/chromium"
FAST = EditOptions(steps=2, guidance_scale=1.0, image_guidance_scale=1.0, seed=3, resolution=64)


def test_options_from_widgets():
    fixed = make_options(7.5, 1.5, 10, 42.0, False, "ddim", 64)
    assert (fixed.seed, fixed.steps, fixed.scheduler) == (42, 10, "ddim")
    assert make_options(7.5, 1.5, 10, 42, True, "ddim", 64).seed != make_options(7.5, 1.5, 10, 42, True, "ddim", 64).seed
    with pytest.raises(BadOptions, match="unknown scheduler"):
        make_options(7.5, 1.5, 10, 1, False, "warp", 64)
    # The API's ranges, not the old sliders' 100 steps / 15 text guidance; errors use the UI's labels.
    wide = make_options(50, 50, 1000, 7, False, "euler", 64, negative_prompt="blurry")
    assert (wide.steps, wide.guidance_scale, wide.image_guidance_scale, wide.negative_prompt) == (1000, 50, 50, "blurry")
    with pytest.raises(BadOptions, match=r"^Steps must be between 1 and 1000, got 5000"):
        make_options(7.5, 1.5, 5000, 1, False, "ddim", 64)
    with pytest.raises(BadOptions, match="^" + re.escape(TEXT_LABEL) + " must be between 0 and 50"):
        make_options(60, 1.5, 10, 1, False, "ddim", 64)
    with pytest.raises(BadOptions, match="^" + re.escape(IMAGE_LABEL) + " must be between"):
        make_options(7.5, -1, 10, 1, False, "ddim", 64)
    with pytest.raises(BadOptions, match="^Seed must be between 0"):
        make_options(7.5, 1.5, 10, -5, False, "ddim", 64)
    with pytest.raises(BadOptions, match=r"^Variations must be between 1 and 4 on this server"):
        make_options(7.5, 1.5, 10, 1, False, "ddim", 64, num_images=5, limits={"num_images": 4})


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
    assert len(problems) == 1 and problems[0].startswith("broken.png: ")
    assert str(tmp_path) not in problems[0]  # the file's name, never the (temporary upload) path
    with pytest.raises(BadOptions, match="none of the files") as caught:
        edit_many(tiny_editor, [str(tmp_path / "broken.png")], "make it blue", FAST)
    assert str(tmp_path) not in str(caught.value)
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
    with pytest.raises(BadOptions, match="^s_I values must be between 0 and 50"):
        parse_scales("1, 99", "s_I values", "image_guidance_scale")


def test_undo_restores_the_whole_previous_state(tiny_editor):
    """Undo brings back the input and what the Result tab showed (slider, parameters, download), so
    "Edit the result again" after Undo edits the restored result, not the undone one."""
    scratch = Scratch()
    photo = gradient_image(64, 32, seed=4)
    first = outcome_of(edit_one(tiny_editor, photo, "make it blue", FAST), photo, scratch)
    chained, history = again(photo, first, [])
    assert chained is first.chosen[0] and history_view(history)[0][1] == "0: make it blue"
    second = outcome_of(edit_one(tiny_editor, chained, "make it red", FAST), chained, scratch)
    assert second.chosen[1]["instruction"] == "make it red"

    image, restored, history = undo(history)
    assert image is photo and history == []
    pair, params, path, gallery, zipped = result_view(restored)
    assert pair == (photo, first.chosen[0]) and params["instruction"] == "make it blue" and gallery == []
    assert read_params(path)["instruction"] == "make it blue" and zipped is None
    assert reuse_seed(restored) == first.chosen[1]["seed"]
    again_input, _ = again(image, restored, history)
    assert again_input is first.chosen[0]  # not the undone "make it red" result
    with pytest.raises(BadOptions, match="nothing to undo"):
        undo([])
    with pytest.raises(BadOptions, match="edit the picture first"):
        again(photo, Outcome(), [])
    with pytest.raises(BadOptions, match="no result yet"):
        reuse_seed(Outcome())


def test_variations_come_with_a_zip(tiny_editor):
    scratch = Scratch()
    photo = gradient_image(64, 32, seed=5)
    options = EditOptions(steps=2, seed=10, resolution=64, num_images=3).check()
    outcome = outcome_of(edit_one(tiny_editor, photo, "make it blue", options), photo, scratch)
    pair, params, path, gallery, zipped = result_view(outcome)
    assert [caption for _, caption in gallery] == ["seed 10", "seed 11", "seed 12"]
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        assert len(names) == 3 and all(name.endswith(".png") for name in names)
        assert read_params(archive.read(names[2]))["seed"] == 12


def test_stop_cancels_at_the_next_step_and_the_editor_stays_usable(tiny_editor):
    flags = StopFlags()
    flag = flags.begin("session")
    seen = []

    def progress(step, total):
        seen.append(step)
        if step == 2:
            assert flags.stop("session")  # as the Stop button does, while the edit runs

    options = EditOptions(steps=40, seed=1, resolution=64).check()
    with pytest.raises(Cancelled, match="stopped at step 3 of 40"):
        edit_one(tiny_editor, gradient_image(64, 32), "make it blue", options, stoppable(flag, progress))
    assert seen == [1, 2]
    flags.end("session", flag)
    assert not flags.stop("session")  # nothing running: nothing to stop
    assert edit_one(tiny_editor, gradient_image(64, 32), "make it blue", FAST).image.size == (64, 32)


def test_live_previews_come_during_the_edit_and_end_at_the_result(tiny_editor):
    previews = []
    options = EditOptions(steps=10, seed=2, resolution=64).check()
    result = edit_one(tiny_editor, gradient_image(64, 32), "make it blue", options, preview=previews.append)
    assert len(previews) == 5  # every 2 of 10 steps
    assert all(len(p) == 1 and p[0].size == (64, 32) for p in previews)
    first, last = (np.asarray(p[0], dtype=float) for p in (previews[0], previews[-1]))
    assert np.abs(first - last).mean() > 1  # the estimate sharpens as the steps go
    assert np.array_equal(np.asarray(previews[-1][0]), np.asarray(result.image))  # the last one is the result
    from ip2p.editor import Editor
    from ip2p.tiny import build_tiny_components
    from ip2p.ui import previews_by_default

    assert previews_by_default(tiny_editor)  # 32 px, like the demo's 64: a decode costs next to nothing
    assert not previews_by_default(Editor(build_tiny_components(seed=0, sample_size=256)))  # 256 px on a CPU


def test_streamed_edit_yields_previews_then_the_result_and_a_stop_restores(tiny_editor):
    gr = pytest.importorskip("gradio")
    from ip2p.ui import _Handlers

    h = _Handlers(gr, tiny_editor, FAST, None)
    picture = gradient_image(64, 32)

    def work(feed, show):
        options = EditOptions(steps=4, seed=2, resolution=64).check()
        result = edit_one(tiny_editor, picture, "make it blue", options, feed,
                          preview=lambda images: show((picture, images[0])))
        return (result.image, "done")

    updates = list(h.stream(None, lambda *a, **k: None, work, 1, 0, restore="before"))
    assert len(updates) == 1 + 4 // 1  # a preview every step at 4 steps, then the result
    assert all(u[1] == gr.skip() and u[0][0] is picture for u in updates[:-1])
    assert updates[-1][1] == "done"

    def stopped(feed, show):
        options = EditOptions(steps=6, seed=2, resolution=64).check()
        flag_feed = feed
        edit_one(tiny_editor, picture, "make it blue", options,
                 lambda step, total: (step == 3 and h.stop(None)) or flag_feed(step, total),
                 preview=lambda images: show((picture, images[0])))

    updates = list(h.stream(None, lambda *a, **k: None, stopped, 1, 0, restore="before"))
    assert updates[-1][0] == "before" and updates[-1][1].startswith("Stopped at step")


def test_mask_panel_choices_and_a_painted_mask(tiny_editor):
    picture = gradient_image(64, 32)
    stroke = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    stroke.paste((255, 51, 102, 255), (10, 5, 30, 20))
    value = {"background": picture, "layers": [stroke], "composite": picture}
    painted = mask_from_brush(value)
    assert painted.shape == (32, 64) and painted.sum() == 20 * 15
    assert choose_mask(MASK_MODES[0], value, "") is None
    assert choose_mask(MASK_MODES[2], None, "") == "auto"
    assert choose_mask(MASK_MODES[3], None, " the sky ") == "text:the sky"
    with pytest.raises(BadOptions, match="paint the area"):
        choose_mask(MASK_MODES[1], {"background": picture, "layers": []}, "")
    with pytest.raises(BadOptions, match="describe the area"):
        choose_mask(MASK_MODES[3], None, " ")
    options = make_options(1.0, 1.0, 2, 3, False, "euler_a", 64, mask_feather=0.0)
    result = edit_one(tiny_editor, picture, "make it blue", options, mask=choose_mask(MASK_MODES[1], value, ""))
    keep = ~painted
    assert np.array_equal(np.asarray(result.image)[keep], np.asarray(picture)[keep])
    outcome = outcome_of(result, picture, Scratch())
    assert np.array_equal(np.asarray(outcome.mask) > 127, painted)


def test_broken_upload_is_one_ip2p_line_naming_the_file(tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import ImageData

    import ip2p.ui as ui_module
    from ip2p.ui import _image_input

    upload = tmp_path / "gradio" / "0123abcd"  # like Gradio's upload cache
    upload.mkdir(parents=True)
    good = upload / "photo.png"
    gradient_image(64, 32).save(good)
    broken = upload / "holiday.png"
    broken.write_bytes(good.read_bytes()[:120])  # a truncated PNG
    component = _image_input(gr)
    assert component.get_block_name() == "image"  # the browser draws the stock Image component
    assert not os.path.exists(os.path.splitext(ui_module.__file__)[0] + ".pyi")  # no stub written into the package
    assert component.preprocess(ImageData(path=str(good), orig_name="photo.png")).size == (64, 32)
    with pytest.raises(gr.Error) as caught:
        component.preprocess(ImageData(path=str(broken), orig_name="holiday.png"))
    message = caught.value.message
    assert message.startswith("holiday.png: ") and "\n" not in message
    assert str(tmp_path) not in message and "OSError" not in message and "Traceback" not in message
    assert caught.value.print_exception is False  # a user's mistake: no traceback on the terminal


def test_a_picture_shown_again_is_never_cut_short_for_a_browser_reading_it():
    """"Again" and "undo" show the same pictures twice; Gradio's cache file must stay whole meanwhile."""
    gr = pytest.importorskip("gradio")
    cache_shown_images_atomically()
    shown, picture = gr.Image(format="png"), gradient_image(64, 64, seed=31)
    path = Path(shown.postprocess(picture).path)
    size, short, done = path.stat().st_size, [], threading.Event()

    def browser():
        while not done.is_set():
            if (n := len(path.read_bytes())) != size:
                short.append(n)

    reader = threading.Thread(target=browser)
    reader.start()
    try:
        for _ in range(300):
            assert shown.postprocess(picture).path == str(path)
    finally:
        done.set()
        reader.join()
    assert short == []
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left behind


def test_load_parameters_reads_ip2p_and_a1111_pngs(tiny_editor, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    result = edit_one(tiny_editor, gradient_image(64, 32), "make it blue",
                      EditOptions(steps=3, seed=77, resolution=64, guidance_scale=4.5, scheduler="ddim",
                                  negative_prompt="blurry").check())
    mine = save_image(result.image, tmp_path / "mine.png", result.params[0])
    values, notes = settings_from_params(read_params(mine))
    assert notes == []
    assert values == {"instruction": "make it blue", "guidance_scale": 4.5, "image_guidance_scale": 1.5, "steps": 3,
                      "seed": 77, "scheduler": "ddim", "negative_prompt": "blurry", "resolution": 64}

    info = PngInfo()
    info.add_text("parameters", "a cat in the snow\nNegative prompt: lowres\nSteps: 30, Sampler: DPM++ 2M Karras, "
                                "CFG scale: 9, Image CFG scale: 1.25, Seed: 1234, Size: 512x380, Model hash: abc")
    gradient_image(32, 32).save(tmp_path / "a1111.png", pnginfo=info)
    values, notes = settings_from_params(read_params(tmp_path / "a1111.png"))
    assert values == {"instruction": "a cat in the snow", "negative_prompt": "lowres", "steps": 30,
                      "scheduler": "dpm++2m", "guidance_scale": 9.0, "image_guidance_scale": 1.25, "seed": 1234,
                      "resolution": 512}
    values, notes = settings_from_params({"instruction": "x", "seed": -1, "scheduler": "Heun", "steps": 20})
    assert values == {"instruction": "x", "steps": 20}
    assert notes[0].startswith("Seed must be between 0") and "Sampler: unknown scheduler 'Heun'" in notes[1]
    gradient_image(16, 16).save(tmp_path / "plain.png")
    with pytest.raises(BadImage, match="no ip2p or AUTOMATIC1111"):
        read_params(tmp_path / "plain.png")


def test_controls_take_the_schema_ranges_and_progress_shows_once(tiny_editor):
    gr = pytest.importorskip("gradio")
    from ip2p.ui import build_ui

    demo = build_ui(tiny_editor, EditOptions(resolution=64), limits={"num_images": 4})
    sliders = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Slider)}
    for name in ("steps", "guidance_scale", "image_guidance_scale", "resolution", "num_images"):
        option = BY_NAME[name]
        slider = sliders[option.label]
        hi = 4 if name == "num_images" else option.hi
        assert (slider.minimum, slider.maximum) == (option.lo, hi), name
        assert f"({option.lo:g}-{hi:g})" in slider.info  # the control says its range
    labels = {getattr(b, "label", None) for b in demo.blocks.values()} | {
        getattr(b, "value", None) for b in demo.blocks.values() if isinstance(b, gr.Button)}
    assert {"Negative prompt", "Randomise seed", "♻️ Reuse", "Stop", "Reset settings to defaults",
            "Image with parameters", "Download all (zip)"} <= labels
    ids = {b.elem_id: b._id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    deps = demo.config["dependencies"]
    edits = [dep for dep in deps if {ids["result-slider"], ids["status"]} <= set(dep["outputs"])]
    assert len(edits) == 2  # the Edit button and Enter in the instruction box
    assert all(dep["show_progress_on"] == [ids["result-slider"]] for dep in edits)  # one progress bar
    quick = [dep for dep in deps if ids["result-slider"] in dep["outputs"] and dep not in edits]  # select, undo
    assert len(quick) == 2 and all(dep["show_progress"] == "hidden" for dep in quick)
    assert example_pictures() and example_pictures()[0][1] == "make the circle blue"
    defaults = starting_values(tiny_editor, EditOptions(resolution=64))
    assert defaults.seed is None and defaults.steps == 20


# ------------------------------------------------------------------------------------------------
# A real headless Chromium on the page `ip2p serve` mounts (the same app `ip2p ui` launches)

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Status trackers (Gradio's progress and error overlays) that are showing, with the id of the
#: component each sits on.
SHOWING_TRACKERS = """() => [...document.querySelectorAll('[data-testid="status-tracker"]')]
    .filter(e => !e.classList.contains('hide') && e.getBoundingClientRect().height > 0
                 && (e.querySelector('.progress-bar, .eta-bar, .progress-text, .meta-text, .loading, span.error')))
    .map(e => (e.closest('[id]') || {}).id || '?')"""
ERROR_MARKS = """() => [...document.querySelectorAll('[data-testid="status-tracker"] span.error')]
    .filter(e => e.getBoundingClientRect().height > 0).map(e => (e.closest('[id]') || {}).id || '?')"""


def browser_test(fn):
    fn = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                            reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")(fn)
    return pytest.mark.browser(fn)


@pytest.fixture(scope="module")
def ui(tiny_editor, tmp_path_factory):
    """One server and one browser for the browser tests; each test opens a fresh page (session)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    from ip2p.server import BackgroundServer, ServerSettings, create_app

    folder = tmp_path_factory.mktemp("ui")
    gradient_image(64, 32, seed=9).save(folder / "photo.png")
    (folder / "broken.png").write_bytes((folder / "photo.png").read_bytes()[:150])  # a truncated PNG
    app = create_app(tiny_editor, ServerSettings(default_resolution=64))
    outside: list[str] = []
    with BackgroundServer(app) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)

        def open_page():
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
            page.wait_for_selector("#edit-button", timeout=120_000)
            return page

        def fetch(page, url: str) -> bytes:
            return page.request.get(url if url.startswith(("http", "data:")) else server.url + url).body()

        def pixels(page, url: str) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(fetch(page, url))).convert("RGB"), dtype=float)

        yield SimpleNamespace(open=open_page, fetch=fetch, pixels=pixels, folder=folder, outside=outside)
        browser.close()
    assert outside == [], f"the page tried to reach other hosts: {outside}"


def _upload(page, path) -> None:
    page.locator("#source-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#source-image img", timeout=60_000)


def _edit(page, instruction: str | None = None, done: str = "Edited in") -> None:
    if instruction is not None:
        page.locator("#instruction textarea").fill(instruction)
    page.locator("#edit-button").click()
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({done!r})", timeout=300_000)


def _set_number(page, elem_id: str, value) -> str:
    """Type ``value`` into a control's number box, leave it, and return what the box then holds."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    page.wait_for_timeout(300)
    return box.input_value()


def _toasts(page) -> list[str]:
    page.wait_for_selector('[data-testid="toast-body"]', timeout=60_000)
    return page.locator('[data-testid="toast-body"]').all_inner_texts()


def _slider_images(ui, page) -> list[np.ndarray]:
    sources = page.eval_on_selector_all("#result-slider img", "els => els.map(e => e.src)")[:2]
    return [ui.pixels(page, src) for src in sources]


def _download_params(ui, page, elem_id: str = "download") -> dict:
    return read_params(ui.fetch(page, page.locator(f"#{elem_id} a").first.get_attribute("href")))


@browser_test
def test_browser_upload_edit_chain_and_undo_restores_everything(ui):
    page = ui.open()
    source = ui.folder / "photo.png"
    _upload(page, source)
    _edit(page, "make it blue")
    before, after = _slider_images(ui, page)
    assert before.shape == after.shape == (32, 64, 3)
    assert np.abs(before - np.asarray(Image.open(source), dtype=float)).max() <= 1  # the upload itself
    assert np.abs(after - before).mean() > 5  # a real, different result
    params = _download_params(ui, page)
    assert params["instruction"] == "make it blue" and params["resolution"] == 64
    assert str(params["seed"]) in page.locator("#params").inner_text()  # full parameters shown

    page.locator("#again-button").click()  # the result becomes the new input, the old one goes to history
    page.wait_for_function("document.querySelectorAll('#history img').length >= 1", timeout=60_000)
    page.wait_for_timeout(500)
    chained = ui.pixels(page, page.locator("#source-image img").first.get_attribute("src"))
    assert np.abs(chained - after).max() <= 1
    page.locator("#instruction textarea").fill("make it red")
    page.locator("#edit-button").click()
    page.wait_for_function("document.querySelector('#params').innerText.includes('make it red')", timeout=300_000)
    assert _download_params(ui, page)["instruction"] == "make it red"

    page.locator("#undo-button").click()  # back to before "again": input, slider, parameters and download
    page.wait_for_function("document.querySelectorAll('#history img').length == 0", timeout=60_000)
    page.wait_for_function("!document.querySelector('#params').innerText.includes('make it red')", timeout=60_000)
    page.wait_for_timeout(500)
    restored = ui.pixels(page, page.locator("#source-image img").first.get_attribute("src"))
    assert np.abs(restored - before).max() <= 1
    shown_before, shown_after = _slider_images(ui, page)
    assert np.abs(shown_before - before).max() <= 1 and np.abs(shown_after - after).max() <= 1
    assert "make it blue" in page.locator("#params").inner_text()
    assert _download_params(ui, page) == params

    page.locator("#again-button").click()  # after Undo, "again" takes the restored result, not the undone one
    page.wait_for_function("document.querySelectorAll('#history img').length == 1", timeout=60_000)
    page.wait_for_timeout(500)
    again_input = ui.pixels(page, page.locator("#source-image img").first.get_attribute("src"))
    assert np.abs(again_input - after).max() <= 1
    page.close()


@browser_test
def test_browser_stop_full_step_range_and_one_progress_bar(ui):
    page = ui.open()
    _upload(page, ui.folder / "photo.png")
    assert _set_number(page, "steps", 500) == "500"  # the old slider turned this into 100 without a word
    assert _set_number(page, "text-cfg", 40) == "40"
    assert _set_number(page, "text-cfg", 7.5) == "7.5"
    assert _set_number(page, "steps", 1000) == "1000"
    # `ip2p serve` mounts the UI with its own limits (4 variations by default), stated on the control.
    assert page.locator("#num-images input[type=range]").get_attribute("max") == "4"
    assert "(1-4)" in page.locator("#num-images").inner_text()
    page.locator("#instruction textarea").fill("make it blue")
    page.locator("#edit-button").click()
    page.wait_for_selector("#result-slider .progress-bar, #result-slider .progress-text", timeout=120_000)
    for _ in range(3):  # progress shows once, on the result, never over the Seed box or the other outputs
        assert page.evaluate(SHOWING_TRACKERS) == ["result-slider"]
        page.wait_for_timeout(300)
    page.locator("#stop-button").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stopped at step')", timeout=120_000)
    assert re.fullmatch(r"Stopped at step \d+ of 1000; the previous result is kept\.",
                        page.locator("#status").inner_text().strip())
    page.wait_for_function(f"({SHOWING_TRACKERS})().length == 0", timeout=30_000)
    assert page.locator("#result-slider img").count() == 0  # nothing half-done is shown
    assert _set_number(page, "steps", 2) == "2"
    _edit(page)  # the UI is usable again at once
    assert page.locator("#result-slider img").count() >= 2
    page.close()


@browser_test
def test_browser_user_errors_are_one_line_clear_on_the_next_run_and_print_no_traceback(ui, capfd):
    page = ui.open()
    _upload(page, ui.folder / "photo.png")
    page.locator("#edit-button").click()  # no instruction yet
    assert any("write an instruction first" in text for text in _toasts(page))
    assert page.evaluate(ERROR_MARKS) == ["result-slider"]  # one mark, on the result, none on the Seed box
    _edit(page, "make it blue")
    assert page.evaluate(ERROR_MARKS) == []  # the next run clears it
    page.close()

    page = ui.open()  # a corrupt PNG: ip2p's one line naming the file, no temporary path, no OSError
    _upload(page, ui.folder / "broken.png")
    page.locator("#instruction textarea").fill("make it blue")
    page.locator("#edit-button").click()
    texts = " ".join(_toasts(page))
    assert "broken.png: cannot decode the image" in texts
    for internal in (str(ui.folder), "/tmp", "gradio", "OSError", "Traceback"):
        assert internal not in texts

    page.get_by_role("tab", name="Several images").click()  # names only, never Gradio's upload paths
    page.locator("#many-files input[type=file]").set_input_files([str(ui.folder / "photo.png"),
                                                                 str(ui.folder / "broken.png")])
    # the list shows "broken" and ".png" in two boxes, on one line or two, as the column's width allows
    page.wait_for_function("document.querySelector('#many-files').textContent.replace(/\\s+/g, '')"
                           ".includes('broken.png')", timeout=60_000)
    page.locator("#many-button").click()
    page.wait_for_function("document.querySelector('#many-note').innerText.includes('Edited 1 images')",
                           timeout=300_000)
    note = page.locator("#many-note").inner_text()
    assert "Could not read: broken.png: cannot decode the image" in note
    assert "/tmp" not in note and "gradio" not in note
    with zipfile.ZipFile(io.BytesIO(ui.fetch(page, page.locator("#many-zip a").first.get_attribute("href")))) as z:
        assert [name.split("-")[0] for name in z.namelist()] == ["photo"]
    page.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err  # user errors are not logged as crashes


@browser_test
def test_browser_load_parameters_reset_reuse_seed_and_examples(ui):
    params = {"instruction": "make the circle blue", "negative_prompt": "blurry", "steps": 37, "seed": 4242,
              "guidance_scale": 6.5, "image_guidance_scale": 1.25, "scheduler": "ddim", "resolution": 64}
    save_image(gradient_image(32, 32), ui.folder / "made.png", params)
    page = ui.open()
    page.get_by_role("tab", name="Load parameters").click()
    page.locator("#params-file input[type=file]").set_input_files(str(ui.folder / "made.png"))
    page.wait_for_function("document.querySelector('#status').innerText.includes('Loaded 8 settings')",
                           timeout=60_000)
    assert page.locator("#instruction textarea").input_value() == "make the circle blue"
    assert page.locator("#negative-prompt textarea").input_value() == "blurry"
    assert page.locator("#steps input[type=number]").input_value() == "37"
    assert page.locator("#text-cfg input[type=number]").input_value() == "6.5"
    assert page.locator("#image-cfg input[type=number]").input_value() == "1.25"
    assert page.locator("#seed input").input_value() == "4242"
    assert not page.locator("#randomize input").is_checked()
    assert page.locator("#scheduler input").input_value() == "ddim"

    page.locator("#reset-button").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('reset')", timeout=60_000)
    assert page.locator("#steps input[type=number]").input_value() == "20"
    assert page.locator("#negative-prompt textarea").input_value() == ""
    assert page.locator("#randomize input").is_checked()

    page.get_by_text("make it brighter").first.click()  # an example picture with its instruction
    page.wait_for_selector("#source-image img", timeout=60_000)
    assert page.locator("#instruction textarea").input_value() == "make it brighter"
    assert _set_number(page, "steps", 2) == "2"
    _edit(page)
    seed = _download_params(ui, page)["seed"]
    page.locator("#reuse-seed").click()  # ♻️: the shown result's seed, randomise off
    page.wait_for_function("!document.querySelector('#randomize input').checked", timeout=60_000)
    assert page.locator("#seed input").input_value() == str(seed)
    page.close()


@browser_test
def test_browser_brush_mask_keeps_the_rest_and_previews_show_while_editing(ui):
    page = ui.open()
    _upload(page, ui.folder / "photo.png")
    page.get_by_text("Mask: limit where it edits").click()
    page.get_by_label("Painted area").check()
    page.locator("#mask-brush button[aria-label=Brush]").click()
    canvas = page.locator("#mask-brush canvas").last
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    box = canvas.bounding_box()
    # One stroke across the left part of the picture (drawn on the canvas, which shows the picture).
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.wait_for_timeout(500)
    assert _set_number(page, "mask-feather", 0) == "0"
    assert page.locator("#live-preview input").is_checked()  # on by default for a small model
    assert _set_number(page, "steps", 300) == "300"
    page.locator("#instruction textarea").fill("make it blue")
    page.locator("#edit-button").click()
    # A live preview reaches the slider before the edit is done.
    page.wait_for_function("document.querySelectorAll('#result-slider img').length >= 2", timeout=120_000)
    assert "Edited in" not in page.locator("#status").inner_text()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Edited in')", timeout=300_000)
    before, after = _slider_images(ui, page)
    mask = ui.pixels(page, page.locator("#mask-used img").first.get_attribute("src"))[..., 0] > 127
    assert 0 < mask.mean() < 0.5 and mask[:, 44:].sum() == 0  # the stroke only, on the left
    assert np.array_equal(after[~mask], before[~mask])  # outside the painted area: the input's pixels
    assert np.abs(after[mask] - before[mask]).mean() > 1
    assert _download_params(ui, page)["mask"] == "image"
    page.close()


def _start_ui(tmp_path):
    """`ip2p ui` on a tiny model in its own process, on a free port: (process, port)."""
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    model = save_diffusers(build_tiny_components(seed=0), tmp_path / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ip2p", "ui", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ip2p_ui_stops_cleanly_on_ctrl_c_and_sigterm(tmp_path, sig):
    """`ip2p ui` in its own process: Ctrl-C (SIGINT) or SIGTERM closes it in one line, exit 0."""
    proc, port = _start_ui(tmp_path)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == "ip2p: UI stopped" and "Traceback" not in err


def test_ip2p_ui_stops_cleanly_on_ctrl_c_while_it_starts(tmp_path):
    """Ctrl-C in the moment Gradio is still starting up (its first line is out, no page served yet)."""
    proc, _ = _start_ui(tmp_path)
    try:
        seen = []
        while not any("ip2p: UI for" in line for line in seen):
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == "ip2p: UI stopped" and "Traceback" not in "".join(seen) + err
