"""The README's first command, run as a newcomer runs it: a real edit that turns the circle blue.

The command names no model, so ip2p uses the demo model shipped inside the package
(docs/demo-model.md) on a machine without the full model cached; the test gives it an empty HF home
so that it is that machine. It reads the command out of the README, so the two cannot drift apart,
and checks real pixels against the shapes world's exact scene.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def first_command() -> list[str]:
    """The ``ip2p edit ...`` step of the README's first bash block, as argv."""
    block = re.search(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    steps = [step.strip() for step in block.split("&&")]
    edit = [step for step in steps if step.startswith("ip2p edit ")]
    assert len(edit) == 1, steps
    return shlex.split(edit[0])


@pytest.fixture(scope="module")
def readme_edit(tmp_path_factory):
    argv = first_command()
    out = tmp_path_factory.mktemp("readme") / "out.png"
    argv[argv.index("-o") + 1] = str(out)
    if "--seed" not in argv:
        # A newcomer gets a random seed; the test pins one so it cannot flake. How many seeds turn the
        # circle blue is measured by benchmarks/readme_example.py (31 of seeds 0-31 for the shipped
        # weights, docs/demo-model.md).
        argv += ["--seed", "0"]
    home = tmp_path_factory.mktemp("hf-home")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", HF_HOME=str(home))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "ip2p", *argv[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("make_shapes_example", ROOT / "examples" / "make_shapes_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return argv, proc.stderr, np.asarray(Image.open(out).convert("RGB")), module.images()


def test_readme_first_command_turns_the_circle_blue_and_keeps_the_rest(readme_edit):
    """80 % of the circle's core within CIE76 dE 20 of the world's blue; outside the circle (and a
    2 px rim) a mean error within the issue's 6/255 (measured: 2.65 on seeds 0-7)."""
    from ip2p.shapes.color import COLORS, delta_e

    argv, stderr, edited, (before, after, circle) = readme_edit
    assert argv[:3] == ["ip2p", "edit", "examples/shapes.png"]
    if "--model" not in argv:  # no full model cached: the CLI says in one line that it uses the demo
        from ip2p.models import describe_default

        assert describe_default("demo") in stderr.splitlines()
    assert edited.shape == before.shape
    blue = delta_e(edited, np.asarray(COLORS["blue"], dtype=np.uint8)[None, None])[circle]
    assert (blue < 20).mean() >= 0.8, float((blue < 20).mean())
    near = np.any(before != after, axis=-1)
    for _ in range(2):
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
    outside = np.abs(edited.astype(np.float32) - before.astype(np.float32))[~near].mean()
    assert outside <= 6.0, float(outside)
