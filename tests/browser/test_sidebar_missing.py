"""The Training panel says in plain words when the server extension is not running."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import open_panel, screenshot, start_lab

pytestmark = pytest.mark.browser


def test_panel_says_the_server_extension_is_missing(page: Any, tmp_path: Any) -> None:
    server = start_lab(tmp_path, server_extension=False)
    try:
        panel = open_panel(page, server)

        banner = panel.locator(".tml-Banner[role=alert]")
        banner.wait_for(timeout=30_000)
        text = banner.inner_text()
        screenshot(page, "extension-missing")
    finally:
        server.stop()

    assert "server extension is not running" in text
    assert "jupyter server extension list" in text
