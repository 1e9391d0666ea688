"""The Training panel works under a JupyterHub-style base URL, and in the dark theme."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import open_panel, screenshot, start_lab

pytestmark = pytest.mark.browser

BASE_URL = "/user/tester/"


def test_panel_under_a_non_root_base_url(page: Any, tmp_path: Any) -> None:
    server = start_lab(tmp_path, base_url=BASE_URL, theme="JupyterLab Dark")
    api_requests: list[str] = []
    page.on(
        "request",
        lambda request: (
            api_requests.append(request.url) if "training-manager/api/" in request.url else None
        ),
    )
    jobs_statuses: list[int] = []
    page.on(
        "response",
        lambda response: (
            jobs_statuses.append(response.status)
            if "training-manager/api/jobs?" in response.url
            else None
        ),
    )
    try:
        panel = open_panel(page, server)
        panel.locator(".tml-Node").first.wait_for(timeout=30_000)
        # A new MLflow store takes a few seconds to create on the first request.
        panel.locator(".tml-ModelsSection .tml-Empty", has_text="No registered model").wait_for(
            timeout=60_000
        )
        jobs_title = panel.locator(".tml-JobsSection .tml-SectionTitle").inner_text()
        models_title = panel.locator(".tml-ModelsSection .tml-SectionTitle").inner_text()
        alerts = panel.locator(".tml-Banner[role=alert]").count()
        colours = panel.evaluate(
            "node => [getComputedStyle(node).backgroundColor, getComputedStyle(node).color]"
        )
        # An unchanged job list is answered 304 Not Modified, not sent again.
        page.wait_for_event(
            "response",
            lambda response: (
                "training-manager/api/jobs?" in response.url and response.status == 304
            ),
            timeout=30_000,
        )
        screenshot(page, "base-url-dark")
    finally:
        server.stop()

    prefix = f"{server.url}training-manager/api/"
    assert server.url.endswith(BASE_URL)
    assert alerts == 0
    assert jobs_title == "Jobs (0)"
    assert models_title == "Models (0)"
    assert {"jobs", "resources", "models"} <= {
        url[len(prefix) :].split("?")[0] for url in api_requests if url.startswith(prefix)
    }
    assert all(url.startswith(prefix) for url in api_requests), api_requests
    assert jobs_statuses[0] == 200 and 304 in jobs_statuses
    background, text = (_luminance(colour) for colour in colours)
    assert background < 0.25 < text, f"the panel does not follow the dark theme: {colours}"


def _luminance(css_colour: str) -> float:
    """Relative brightness in [0, 1] of an ``rgb(r, g, b)`` or ``rgba(...)`` colour."""
    channels = css_colour[css_colour.index("(") + 1 : css_colour.index(")")].split(",")
    red, green, blue = (float(value) / 255 for value in channels[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue
