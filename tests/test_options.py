"""The option schema (ip2p.options.OPTIONS) is the only list of editing options: every surface's
options must come from it, and errors name an option the way its user spelled it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ip2p.errors import BadOptions
from ip2p.options import BY_NAME, MASK_OPTIONS, MATCHED, OPTION_ALIASES, OPTIONS, REPLAYED, EditOptions

NAMES = {o.name for o in OPTIONS}
#: Fields a surface may carry next to the options: what is edited, where from, how to write it.
NOT_OPTIONS = {"image", "instruction", "prompt", "format", "model", "input_sha256", "size", "response_format",
               "output_format", "mask"}


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _edit_flags(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    group = next((g for g in parser._action_groups if g.title == "edit options"), None)
    return {} if group is None else {a.dest: set(a.option_strings) for a in group._group_actions}


def test_edit_options_are_the_schema():
    assert [f.name for f in dataclasses.fields(EditOptions) if f.name != "spelled"] == [o.name for o in OPTIONS]
    for option in OPTIONS:
        assert getattr(EditOptions(), option.name) == option.default
    assert set(OPTION_ALIASES.values()) <= NAMES and not set(OPTION_ALIASES) & NAMES


@pytest.mark.parametrize("path", [("edit",), ("batch",), ("ui",), ("bench", "shapes")])
def test_every_cli_edit_flag_comes_from_the_schema(path):
    from ip2p.cli import build_parser

    flags = _edit_flags(_subparser(build_parser(), *path))
    assert flags, f"`ip2p {' '.join(path)}` has no edit options group"
    for dest, strings in flags.items():
        assert dest in NAMES, f"`ip2p {' '.join(path)}` has an edit flag the schema lacks: {dest}"
        assert strings == {BY_NAME[dest].flag, *BY_NAME[dest].flag_aliases}
    if path in (("edit",), ("batch",)):
        assert set(flags) == NAMES  # the two edit commands take every option


def test_the_servers_request_schema_is_the_option_schema(tiny_editor):
    from ip2p.server import ServerSettings, create_app

    app = create_app(tiny_editor, ServerSettings(ui=False))
    spec = app.openapi()
    for path, alias_of_n in (("/v1/edit", {}), ("/v1/images/edits", {"n": "num_images"})):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        for body in content.values():
            props = body["schema"]["properties"]
            fields = {alias_of_n.get(k, k) for k in props} - NOT_OPTIONS
            assert fields <= NAMES, f"{path} lists options the schema lacks: {fields - NAMES}"
            assert NAMES <= fields, f"{path} lacks options: {NAMES - fields}"
            steps = props["steps"]
            assert (steps["minimum"], steps["maximum"]) == (BY_NAME["steps"].lo, BY_NAME["steps"].hi)


def test_metadata_replay_and_resume_keys_come_from_the_schema(tiny_editor):
    from ip2p.batch import MATCH_KEYS
    from ip2p.images import format_parameters, parse_parameters
    from ip2p.tiny import gradient_image

    assert set(MATCH_KEYS) - {"instruction", "model", "input_sha256"} == set(MATCHED) <= NAMES
    params = tiny_editor.edit(gradient_image(16, 16), "make it blue", steps=2, seed=3).params[0]
    assert set(REPLAYED) - set(MASK_OPTIONS) <= set(params)  # mask knobs: only for masked edits
    back = parse_parameters(format_parameters(params))
    for option in OPTIONS:
        if option.metadata:
            assert back[option.name] == params[option.name], option.name


def test_errors_name_the_option_as_it_was_spelled():
    with pytest.raises(BadOptions, match=r"^text_cfg must be between 0 and 50, got 99$") as caught:
        EditOptions.from_mapping({"text_cfg": 99}).check()
    assert caught.value.param == "text_cfg"
    with pytest.raises(BadOptions, match=r"^--steps must be an integer"):
        EditOptions.from_mapping({"steps": 2.5}, spelled={"steps": "--steps"}).check()
    with pytest.raises(BadOptions, match=r"^n must be between 1 and 4 on this server, got 9$"):
        EditOptions.from_mapping({"n": 9}).check(limits={"num_images": 4})
    with pytest.raises(BadOptions, match="unknown option 'cfg'"):
        EditOptions.from_mapping({"cfg": 1})
    with pytest.raises(BadOptions, match="given twice"):
        EditOptions.from_mapping({"steps": 2, "num_inference_steps": 3})


def test_check_fills_model_then_global_defaults_and_parses_text():
    checked = EditOptions.from_mapping({"keep_working_size": "false", "steps": "4", "seed": None}).check(
        {"guidance_scale": 3.0, "scheduler": "euler"})
    assert checked.steps == 4 and checked.guidance_scale == 3.0 and checked.scheduler == "euler"
    assert checked.image_guidance_scale == BY_NAME["image_guidance_scale"].recommended
    assert checked.keep_working_size is False and isinstance(checked.seed, int)
    assert EditOptions(scheduler="k_euler_ancestral").check().scheduler == "euler_a"


def test_cli_ui_and_server_share_the_models_default_resolution(tiny_editor):
    """One default working size, the model's native one, on every surface (the same seed then gives
    the same image everywhere)."""
    import base64
    import io

    from ip2p.server import BackgroundServer, ServerSettings, create_app
    from ip2p.tiny import gradient_image
    from ip2p.ui import starting_values

    native = tiny_editor.native_resolution
    assert starting_values(tiny_editor).resolution == native
    assert tiny_editor.edit(gradient_image(40, 40), "make it blue", steps=1, seed=0).params[0]["resolution"] == native
    picture = io.BytesIO()
    gradient_image(40, 40).save(picture, format="PNG")
    import httpx

    with BackgroundServer(create_app(tiny_editor, ServerSettings(ui=False))) as running:
        reply = httpx.post(f"{running.url}/v1/edit", timeout=120, json={
            "image": base64.b64encode(picture.getvalue()).decode(), "instruction": "make it blue", "steps": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["images"][0]["params"]["resolution"] == native
