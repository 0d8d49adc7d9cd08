"""External programs some tests drive (a browser, systemd-analyze).

On a developer's machine a missing program skips the test with the command that installs it.
CI installs them itself and sets ``EDGEFLEET_REQUIRE_TOOLS=1``: there a missing program fails
the test, so a broken install step cannot pass as a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, install: str) -> str:
    """The path of program ``name``, or skip (fail under CI) saying how to install it."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("EDGEFLEET_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found
