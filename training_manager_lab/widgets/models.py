"""The model registry widget: models, their versions, tags, aliases, descriptions, comparison."""

from __future__ import annotations

import datetime
import html
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..errors import TrainingManagerError
from ..tracking import validate_alias, validate_tag_key

if TYPE_CHECKING:
    from ..tracking import Tracker

logger = logging.getLogger(__name__)

#: The most versions one comparison overlays.
MAX_COMPARED = 8

#: The most metrics the versions table shows per version.
KEY_METRICS = 4

#: Plotly's "D3" qualitative colours, one per version in turn.
_PALETTE = tuple(qualitative.D3[:8])
_COLUMNS = ("version", "created", "job", "key metrics", "tags", "aliases", "description")
_GRID = "70px 140px 130px 1.4fr 1fr 120px 1fr"


@dataclass
class PendingAction:
    """A change the user asked for and still has to confirm."""

    message: str
    apply: Callable[[], None]
    done: str


def _key_metrics(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """The few metrics worth a table cell: validation ones first, then the rest, by name."""
    ordered = sorted(metrics, key=lambda k: (not k.startswith(("val", "test")), k))
    return [(key, metrics[key]) for key in ordered[:KEY_METRICS]]


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _format_time(seconds: float) -> str:
    if not seconds:
        return ""
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _cell(text: str, title: str | None = None) -> ipywidgets.HTML:
    attr = f' title="{html.escape(title)}"' if title else ""
    return ipywidgets.HTML(f"<div{attr} style='overflow-wrap:anywhere'>{text}</div>")


class ModelsWidget(ipywidgets.VBox):
    """Browse registered models and curate their versions without leaving the notebook.

    The widget lists the registered models; for the chosen one it shows a table of versions
    (version, creation time, the job that trained it, key metrics, tags, aliases,
    description). Below the table, controls add and remove tags, set, move and remove
    aliases, and edit descriptions; each change waits for :meth:`confirm`. Two or more versions
    can be compared: their last metric values side by side and one metric's training curves
    overlaid in a Plotly figure, NaN and infinities drawn as gaps with red markers.

    Every control has a handler method (``on_...``) that tests and scripts can call the way
    a click would. Errors are shown in the widget's status line.

    Args:
        tracker: the MLflow facade to read and change the registry through.
        name: the model to open; ``None`` opens the first one.
        open_job: called with a job id when the user clicks a version's job button; shows
            that job's live view.

    Example::

        widget = ModelsWidget(Tracker(), "digits-mlp", open_job=lambda job_id: ...)
        widget.version_select.value = "2"
        widget.alias_input.value = "champion"
        widget.on_set_alias()
        widget.confirm()
    """

    def __init__(
        self,
        tracker: Tracker,
        name: str | None = None,
        open_job: Callable[[str], Any] | None = None,
    ) -> None:
        self.tracker = tracker
        self.open_job_callback = open_job
        self.model_name: str | None = None
        self.versions: list[dict[str, Any]] = []
        self.pending: PendingAction | None = None
        self.error: str | None = None
        self.job_buttons: dict[str, ipywidgets.Button] = {}
        self._metrics: dict[str, dict[str, float]] = {}
        self._updating = False
        self._build()
        super().__init__(
            [
                ipywidgets.HBox([self.model_select, self.refresh_button]),
                self.status,
                self.table,
                self.editor,
                self.confirm_box,
                self.compare_box,
            ]
        )
        self.refresh(name)

    # Layout -----------------------------------------------------------------------------------

    def _build(self) -> None:
        self.model_select = ipywidgets.Dropdown(description="Model", options=[])
        self.model_select.observe(self._on_model_change, names="value")
        self.refresh_button = ipywidgets.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh(self.model_name))
        self.status = ipywidgets.HTML()
        self.table = ipywidgets.GridBox(
            layout=ipywidgets.Layout(grid_template_columns=_GRID, grid_gap="2px 8px")
        )

        self.version_select = ipywidgets.Dropdown(description="Version", options=[])
        self.version_select.observe(self._on_version_change, names="value")
        self.tag_key_input = ipywidgets.Text(placeholder="tag key", description="Tag")
        self.tag_value_input = ipywidgets.Text(placeholder="value")
        self.add_tag_button = ipywidgets.Button(description="Set tag")
        self.add_tag_button.on_click(lambda _: self.on_add_tag())
        self.remove_tag_button = ipywidgets.Button(description="Remove tag")
        self.remove_tag_button.on_click(lambda _: self.on_remove_tag())
        self.alias_input = ipywidgets.Text(placeholder="alias", description="Alias")
        self.set_alias_button = ipywidgets.Button(description="Set alias")
        self.set_alias_button.on_click(lambda _: self.on_set_alias())
        self.remove_alias_button = ipywidgets.Button(description="Remove alias")
        self.remove_alias_button.on_click(lambda _: self.on_remove_alias())
        self.description_input = ipywidgets.Textarea(
            description="Description", layout=ipywidgets.Layout(width="60%")
        )
        self.save_description_button = ipywidgets.Button(description="Save description")
        self.save_description_button.on_click(lambda _: self.on_save_description())
        self.editor = ipywidgets.VBox(
            [
                self.version_select,
                ipywidgets.HBox(
                    [
                        self.tag_key_input,
                        self.tag_value_input,
                        self.add_tag_button,
                        self.remove_tag_button,
                    ]
                ),
                ipywidgets.HBox(
                    [self.alias_input, self.set_alias_button, self.remove_alias_button]
                ),
                ipywidgets.HBox([self.description_input, self.save_description_button]),
            ]
        )

        self.confirm_label = ipywidgets.HTML()
        self.confirm_button = ipywidgets.Button(description="Confirm", button_style="warning")
        self.confirm_button.on_click(lambda _: self.confirm())
        self.cancel_button = ipywidgets.Button(description="Cancel")
        self.cancel_button.on_click(lambda _: self.cancel())
        self.confirm_box = ipywidgets.HBox(
            [self.confirm_label, self.confirm_button, self.cancel_button],
            layout=ipywidgets.Layout(display="none"),
        )

        self.compare_select = ipywidgets.SelectMultiple(description="Compare", options=[], rows=4)
        self.compare_button = ipywidgets.Button(description="Compare")
        self.compare_button.on_click(lambda _: self.on_compare())
        self.curve_select = ipywidgets.Dropdown(description="Curve", options=[])
        self.curve_select.observe(
            lambda _: None if self._updating else self._draw_curves(), names="value"
        )
        self.compare_table = ipywidgets.HTML()
        self.figure = go.FigureWidget(
            layout={
                "height": 320,
                "margin": {"l": 50, "r": 20, "t": 30, "b": 40},
                "xaxis": {"title": {"text": "step"}},
                "showlegend": True,
            }
        )
        self.compared: list[str] = []
        self.comparison: Any = None
        self.compare_box = ipywidgets.VBox(
            [
                ipywidgets.HBox([self.compare_select, self.compare_button, self.curve_select]),
                self.compare_table,
                self.figure,
            ]
        )

    # Reading ----------------------------------------------------------------------------------

    def refresh(self, name: str | None = None) -> None:
        """Reload the list of models and the versions of ``name`` (or of the current one)."""
        try:
            models = [m["name"] for m in self.tracker.list_models()]
        except Exception as exc:
            self._show_error("could not list the registered models", exc)
            return
        wanted = name if name is not None else self.model_name
        if wanted is not None and wanted not in models:
            self._show_error(
                f"no registered model named {wanted!r}",
                detail="pick one of the list" if models else "register a job's model first",
            )
            wanted = None
        if wanted is None and models:
            wanted = models[0]
        self.model_name = wanted
        self._updating = True
        try:
            self.model_select.options = models
            self.model_select.value = wanted
        finally:
            self._updating = False
        self._load_versions()
        if not models:
            self._show_info("No registered models yet: job.register_model(name) creates one.")

    def _on_model_change(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        if change["new"] is not None and change["new"] != self.model_name:
            self.model_name = change["new"]
            self.cancel()
            self._load_versions()

    def _load_versions(self) -> None:
        self.versions = []
        self._metrics = {}
        if self.model_name is not None:
            try:
                self.versions = self.tracker.list_versions(self.model_name)
                for version in self.versions:
                    run_id = version["run_id"]
                    self._metrics[version["version"]] = (
                        self.tracker.run_metrics(run_id) if run_id else {}
                    )
            except Exception as exc:
                self._show_error(f"could not read the versions of {self.model_name!r}", exc)
        numbers = [v["version"] for v in self.versions]
        previous = self.version_select.value
        self._updating = True
        try:
            self.version_select.options = numbers
            self.version_select.value = (
                previous if previous in numbers else (numbers[-1] if numbers else None)
            )
        finally:
            self._updating = False
        self.compare_select.options = numbers
        self.compare_select.value = tuple(v for v in self.compared if v in numbers)
        self._on_version_change(None)
        self._render_table()

    def _on_version_change(self, change: dict[str, Any] | None) -> None:
        version = self.selected_version()
        self.description_input.value = version["description"] if version else ""

    def selected_version(self) -> dict[str, Any] | None:
        """The version the editing controls act on."""
        chosen = self.version_select.value
        return next((v for v in self.versions if v["version"] == chosen), None)

    def _render_table(self) -> None:
        cells: list[ipywidgets.Widget] = [_cell(f"<b>{c}</b>") for c in _COLUMNS]
        self.job_buttons = {}
        for version in reversed(self.versions):
            number = version["version"]
            job_id = version["job_id"]
            if job_id:
                button = ipywidgets.Button(
                    description=job_id, tooltip=f"open the live view of job {job_id}"
                )
                button.on_click(lambda _, j=job_id: self.on_open_job(j))
                self.job_buttons[number] = button
                job_cell: ipywidgets.Widget = button
            else:
                job_cell = _cell("")
            metrics = _key_metrics(self._metrics.get(number, {}))
            tags = version["tags"]
            cells += [
                _cell(f"<b>{html.escape(number)}</b>"),
                _cell(_format_time(version["created_at"])),
                job_cell,
                _cell("<br>".join(f"{html.escape(k)}: {_format_value(v)}" for k, v in metrics)),
                _cell(
                    "<br>".join(f"{html.escape(k)}={html.escape(tags[k])}" for k in sorted(tags))
                ),
                _cell(" ".join(f"<code>@{html.escape(a)}</code>" for a in version["aliases"])),
                _cell(html.escape(version["description"]), title=version["description"]),
            ]
        self.table.children = cells

    # Changing ---------------------------------------------------------------------------------

    def _stage(self, message: str, apply: Callable[[], None], done: str) -> None:
        self.pending = PendingAction(message, apply, done)
        self.confirm_label.value = html.escape(message)
        self.confirm_box.layout.display = "flex"
        self.error = None
        self.status.value = ""

    def _target(self) -> tuple[str, dict[str, Any]] | None:
        version = self.selected_version()
        if self.model_name is None or version is None:
            self._show_error("choose a model and a version first")
            return None
        return self.model_name, version

    def on_add_tag(self) -> None:
        """Ask to set the tag in the tag inputs on the chosen version."""
        target = self._target()
        if target is None:
            return
        name, version = target
        key, value = self.tag_key_input.value.strip(), self.tag_value_input.value
        number = version["version"]
        try:
            validate_tag_key(key)
        except TrainingManagerError as exc:
            self._show_error("cannot set that tag", exc)
            return
        old = version["tags"].get(key)
        change = f"from {old!r} to {value!r}" if old is not None else f"to {value!r}"
        self._stage(
            f"Set tag {key!r} of {name} version {number} {change}?",
            lambda: self.tracker.set_version_tag(name, number, key, value),
            f"tag {key!r} set on version {number}",
        )

    def on_remove_tag(self) -> None:
        """Ask to remove the tag named in the tag key input from the chosen version."""
        target = self._target()
        if target is None:
            return
        name, version = target
        key = self.tag_key_input.value.strip()
        number = version["version"]
        if key not in version["tags"]:
            have = ", ".join(sorted(version["tags"])) or "none"
            self._show_error(f"version {number} has no tag {key!r} (its tags: {have})")
            return
        self._stage(
            f"Remove tag {key!r} from {name} version {number}?",
            lambda: self.tracker.delete_version_tag(name, number, key),
            f"tag {key!r} removed from version {number}",
        )

    def on_set_alias(self) -> None:
        """Ask to point the alias in the alias input at the chosen version (moving it)."""
        target = self._target()
        if target is None:
            return
        name, version = target
        alias = self.alias_input.value.strip()
        number = version["version"]
        try:
            validate_alias(alias)
        except TrainingManagerError as exc:
            self._show_error("cannot set that alias", exc)
            return
        current = next((v["version"] for v in self.versions if alias in v["aliases"]), None)
        if current == number:
            self._show_info(f"@{alias} already points at version {number}.")
            return
        move = f" (moving it from version {current})" if current else ""
        self._stage(
            f"Point @{alias} of {name} at version {number}{move}?",
            lambda: self.tracker.set_alias(name, alias, number),
            f"@{alias} now points at version {number}",
        )

    def on_remove_alias(self) -> None:
        """Ask to remove the alias in the alias input from the model."""
        if self.model_name is None:
            self._show_error("choose a model first")
            return
        alias = self.alias_input.value.strip()
        name = self.model_name
        current = next((v["version"] for v in self.versions if alias in v["aliases"]), None)
        if current is None:
            self._show_error(f"model {name!r} has no alias {alias!r}")
            return
        self._stage(
            f"Remove @{alias} (now on version {current}) from {name}?",
            lambda: self.tracker.delete_alias(name, alias),
            f"@{alias} removed",
        )

    def on_save_description(self) -> None:
        """Ask to replace the chosen version's description by the text in the editor."""
        target = self._target()
        if target is None:
            return
        name, version = target
        text = self.description_input.value
        number = version["version"]
        self._stage(
            f"Replace the description of {name} version {number}?",
            lambda: self.tracker.set_description(name, number, text),
            f"description of version {number} saved",
        )

    def confirm(self) -> None:
        """Carry out the change waiting for confirmation, then reload the versions."""
        pending = self.pending
        if pending is None:
            self._show_error("nothing to confirm")
            return
        self.cancel()
        try:
            pending.apply()
        except Exception as exc:
            self._show_error("the change was refused", exc)
            self._load_versions()
            return
        self._load_versions()
        if self.compared:
            self.on_compare(self.compared)
        self._show_info(pending.done[0].upper() + pending.done[1:] + ".")

    def cancel(self) -> None:
        """Drop the change waiting for confirmation."""
        self.pending = None
        self.confirm_label.value = ""
        self.confirm_box.layout.display = "none"

    def on_open_job(self, job_id: str) -> None:
        """Show the live view of the job that trained a version."""
        if self.open_job_callback is None:
            self._show_info(f"Job {job_id}: tml.job({job_id!r}) shows its live view.")
            return
        try:
            self.open_job_callback(job_id)
        except Exception as exc:
            self._show_error(f"could not open job {job_id}", exc)

    # Comparing --------------------------------------------------------------------------------

    def on_compare(self, versions: list[str] | None = None) -> None:
        """Compare the versions chosen in the compare list (or ``versions``): table and curves."""
        chosen = [str(v) for v in (versions if versions is not None else self.compare_select.value)]
        if self.model_name is None or len(chosen) < 2:
            self._show_error("choose two or more versions to compare")
            return
        if len(chosen) > MAX_COMPARED:
            self._show_error(f"compare at most {MAX_COMPARED} versions at a time")
            return
        try:
            frame = self.tracker.compare(self.model_name, chosen)
        except Exception as exc:
            self._show_error("could not compare those versions", exc)
            return
        self.compared = list(frame.columns)
        self.comparison = frame
        self.compare_table.value = frame.to_html(
            na_rep="-", float_format=_format_value, classes="tml-compare", border=0
        )
        keys = list(frame.index)
        previous = self.curve_select.value
        preferred = [k for k in keys if k.startswith(("val", "test"))]
        self._updating = True
        try:
            self.curve_select.options = keys
            self.curve_select.value = (
                previous if previous in keys else (preferred or keys or [None])[0]
            )
        finally:
            self._updating = False
        self._draw_curves()

    def curves(self, key: str) -> list[dict[str, Any]]:
        """Each compared version's history of ``key``: version, steps, values, non-finite points.

        Values are ``None`` where the stored value is not finite, so lines break there; the
        non-finite points come back as ``(step, "nan" | "inf" | "-inf")``.
        """
        runs = {v["version"]: v["run_id"] for v in self.versions}
        out = []
        for number in self.compared:
            run_id = runs.get(number)
            history = self.tracker.metric_history(run_id, key) if run_id else []
            steps = [step for step, _ in history]
            values = [value if math.isfinite(value) else None for _, value in history]
            nonfinite = [
                (step, "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
                for step, v in history
                if not math.isfinite(v)
            ]
            out.append(
                {"version": number, "steps": steps, "values": values, "nonfinite": nonfinite}
            )
        return out

    def _draw_curves(self) -> None:
        key = self.curve_select.value
        if not self.compared or key is None:
            return
        try:
            curves = self.curves(key)
        except Exception as exc:
            self._show_error(f"could not read the history of {key!r}", exc)
            return
        self._ensure_traces()
        with self.figure.batch_update():
            for index in range(MAX_COMPARED):
                line = self.figure.data[2 * index]
                marks = self.figure.data[2 * index + 1]
                if index >= len(curves):
                    line.visible = marks.visible = False
                    line.x, line.y, marks.x, marks.y = [], [], [], []
                    continue
                curve = curves[index]
                line.visible = marks.visible = True
                line.name = f"v{curve['version']}"
                line.x, line.y = curve["steps"], curve["values"]
                marks.name = f"v{curve['version']} not finite"
                marks.x = [step for step, _ in curve["nonfinite"]]
                marks.y = [_marker_height(curve, step) for step, _ in curve["nonfinite"]]
                marks.hovertext = [f"{key} = {kind} at step {s}" for s, kind in curve["nonfinite"]]
            self.figure.layout.title.text = f"{self.model_name}: {key}"
            self.figure.layout.yaxis.title.text = key

    def _ensure_traces(self) -> None:
        # A fixed set of traces, so that every redraw is one batched update of their data.
        if len(self.figure.data) == 2 * MAX_COMPARED:
            return
        traces = []
        for index in range(MAX_COMPARED):
            color = _PALETTE[index % len(_PALETTE)]
            traces.append(
                go.Scatter(x=[], y=[], mode="lines", line={"color": color}, visible=False)
            )
            traces.append(
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers",
                    marker={"symbol": "x", "size": 9, "color": "#c62828"},
                    hoverinfo="text",
                    showlegend=False,
                    visible=False,
                )
            )
        self.figure.add_traces(traces)

    # Messages ---------------------------------------------------------------------------------

    def _show_error(
        self, what: str, exc: BaseException | None = None, detail: str | None = None
    ) -> None:
        text = what if exc is None else f"{what}: {exc}"
        if detail:
            text = f"{text} ({detail})"
        self.error = text
        if exc is not None and not isinstance(exc, TrainingManagerError):
            logger.warning("%s", text)
        self.status.value = f"<span style='color:#c62828'>{html.escape(text)}</span>"

    def _show_info(self, text: str) -> None:
        self.error = None
        self.status.value = f"<span style='color:#2e7d32'>{html.escape(text)}</span>"


def _marker_height(curve: dict[str, Any], step: int) -> float:
    """Where a non-finite point is drawn: at the last finite value before it, else zero."""
    last = 0.0
    for s, value in zip(curve["steps"], curve["values"], strict=True):
        if s > step:
            break
        if value is not None:
            last = value
    return last
