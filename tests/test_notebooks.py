"""The notebooks: every one is executed by the nbval run, and none stores outputs of a local run."""

from __future__ import annotations

import getpass
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPT = ROOT / "scripts" / "notebooks.sh"
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
EXPECTED = {"quickstart.ipynb", "distributed.ipynb", "resources.ipynb", "model_registry.ipynb"}

#: Text that only a local run puts into an output: absolute paths and home folders.
LEAKS = re.compile(
    r"(/home/|/root\b|/Users/|/tmp/|/var/folders/|/wor[k]/|[A-Za-z]:\\\\|site-packages|\.venv)"
)


def _notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _output_text(output: dict[str, Any]) -> str:
    parts = [output.get("text", ""), *output.get("traceback", [])]
    for value in (output.get("data") or {}).values():
        parts.append(value if isinstance(value, str) else json.dumps(value))
    return "".join("".join(part) if isinstance(part, list) else part for part in parts)


def _nbval_command() -> list[str]:
    """The pytest command line of scripts/notebooks.sh, joined across continuation lines."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if "pytest" in words:
            return words
    raise AssertionError(f"{SCRIPT} runs no pytest command")


def test_the_four_notebooks_exist() -> None:
    assert {path.name for path in _notebook_paths()} >= EXPECTED


def test_the_nbval_run_targets_the_whole_notebooks_folder() -> None:
    command = _nbval_command()

    assert "--nbval-lax" in command or "--nbval" in command
    assert "notebooks/" in command or "notebooks" in command
    sanitizer = command[command.index("--nbval-sanitize-with") + 1]
    assert (ROOT / sanitizer).is_file()


def test_nbval_collects_every_notebook() -> None:
    pytest.importorskip("nbval")
    command = _nbval_command()
    options = [
        word for word in command[command.index("pytest") + 1 :] if word not in ("$@", '"$@"')
    ]

    result = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    for path in _notebook_paths():
        assert path.relative_to(ROOT).as_posix() in collected, result.stdout


@pytest.mark.parametrize("path", _notebook_paths(), ids=lambda path: path.name)
def test_notebook_stores_only_the_outputs_nbval_compares(path: Path) -> None:
    notebook = _load(path)

    for index, cell in enumerate(notebook["cells"]):
        outputs = cell.get("outputs") or []
        if not outputs:
            continue
        where = f"{path.name} cell {index}"
        assert _source(cell).startswith(CHECK_MARKER), f"{where} stores outputs of a run"
        assert cell.get("execution_count") is not None, f"{where}: nbval skips unnumbered cells"
        for output in outputs:
            kind = output["output_type"]
            assert kind in ("stream", "display_data"), f"{where} stores a {kind} output"
            assert set(output.get("data") or {}) <= {"text/plain"}, f"{where} stores rich data"


@pytest.mark.parametrize("path", _notebook_paths(), ids=lambda path: path.name)
def test_notebook_leaks_no_path_or_user_name(path: Path) -> None:
    notebook = _load(path)
    user = getpass.getuser()

    texts = [_output_text(o) for cell in notebook["cells"] for o in cell.get("outputs") or []]
    texts.append(json.dumps(notebook.get("metadata", {})))

    for text in texts:
        assert not LEAKS.search(text), f"{path.name} stores a local path: {text[:200]!r}"
        if len(user) > 2:
            assert not re.search(rf"\b{re.escape(user)}\b", text), f"{path.name} names {user}"
    assert "widgets" not in notebook.get("metadata", {}), f"{path.name} stores widget state"


@pytest.mark.parametrize("path", _notebook_paths(), ids=lambda path: path.name)
def test_notebook_explains_itself_and_checks_something(path: Path) -> None:
    cells = _load(path)["cells"]

    assert cells[0]["cell_type"] == "markdown"
    assert "you will see" in _source(cells[0]).lower()
    checked = [c for c in cells if c["cell_type"] == "code" and CHECK_MARKER in _source(c)]
    assert checked, f"{path.name} has no cell whose output nbval compares"
    assert all(c.get("outputs") for c in checked), f"{path.name}: a checked cell expects nothing"


@pytest.mark.parametrize("path", _notebook_paths(), ids=lambda path: path.name)
def test_notebook_uses_only_data_that_ships_with_its_dependencies(path: Path) -> None:
    code = "\n".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "code")

    for needle in ("http://", "https://", "fetch_openml", "download=True", "urlretrieve"):
        assert needle not in code, f"{path.name} fetches data: {needle}"
