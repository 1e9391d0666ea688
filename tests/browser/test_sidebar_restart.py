"""The Training panel reconnects by itself when the Jupyter server restarts."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from .conftest import open_panel, screenshot, start_lab

pytestmark = pytest.mark.browser


def test_panel_reconnects_after_a_server_restart(page: Any, tmp_path: Any) -> None:
    server = start_lab(tmp_path)
    port = urlparse(server.url).port
    try:
        panel = open_panel(page, server)
        panel.locator(".tml-Node").first.wait_for(timeout=30_000)
    finally:
        server.stop()
    banner = panel.locator(".tml-Banner[role=alert]", has_text="cannot be reached")
    banner.wait_for(timeout=60_000)
    down_text = banner.inner_text()
    screenshot(page, "server-down")

    server = start_lab(tmp_path, port=port, token=server.token)
    try:
        banner.wait_for(state="detached", timeout=90_000)
        panel.locator(".tml-Node").first.wait_for(timeout=30_000)
        alerts = panel.locator(".tml-Banner[role=alert]").count()
        screenshot(page, "server-back")
    finally:
        server.stop()

    assert "reconnects by itself" in down_text
    assert alerts == 0
