"""The version is defined once, in ip2p/version.py: the package and its installed metadata agree."""

from __future__ import annotations

from importlib.metadata import version

import ip2p
from ip2p.version import __version__


def test_one_version_everywhere():
    assert ip2p.__version__ == __version__ == version("ip2p")
