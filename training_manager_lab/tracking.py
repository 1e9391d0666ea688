"""The one facade over MLflow tracking and the model registry: runs, metrics, models, lineage."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import linecache
import logging
import math
import os
import posixpath
import random
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import ModelNotFound, RegistryError, TrackingUnavailable

if TYPE_CHECKING:
    import pandas
    import torch
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

#: Tag keys this package sets on runs and model versions.
JOB_ID_TAG = "tml.job_id"
NAMES_TAG = "tml.names"
CODE_HASH_TAG = "tml.code_sha256"
GIT_COMMIT_TAG = "tml.git_commit"
GIT_DIRTY_TAG = "tml.git_dirty"
CHECKPOINT_TAG = "tml.checkpoint"
MODEL_URI_TAG = "tml.model_uri"

#: Artifact files this package writes into a run.
LINEAGE_FILE = "lineage.json"
NAMES_FILE = "tml/names.json"
PARAMS_DIR = "tml/params"

#: Companion series that records which stored NaN was really NaN, +inf or -inf.
NONFINITE_PREFIX = "tml.nonfinite/"
_NONFINITE_CODES = {"nan": 0.0, "inf": 1.0, "-inf": -1.0}
_NONFINITE_VALUES = {0.0: math.nan, 1.0: math.inf, -1.0: -math.inf}

# Limits of the MLflow store (mlflow.utils.validation); a value past them is refused.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_ALIAS_LENGTH = 255
MAX_MODEL_NAME_LENGTH = 250
MAX_VERSION_TAG_VALUE_LENGTH = 100_000
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100

_KEY_RE = re.compile(r"^[/\w.\- :]+$")
_ALIAS_RE = re.compile(r"^[\w\-]+$")
_VERSION_ALIAS_RE = re.compile(r"^[vV]\d+$")
_MAPPED_SUFFIX_RE = re.compile(r"--[0-9a-f]{10}$")
_BAD_KEY_CHAR_RE = re.compile(r"[^/\w.\- :]")

_STATUS_TO_MLFLOW = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}

KEY_RULE = (
    "a key may only contain letters, digits, underscores (_), dashes (-), periods (.), "
    f"spaces, colons (:) and slashes (/), must not be empty or longer than {MAX_KEY_LENGTH} "
    "characters, and must not start with '/' or contain '//', '/./' or '/../'"
)
ALIAS_RULE = (
    "an alias may only contain letters, digits, underscores (_) and dashes (-), must not be "
    f"empty or longer than {MAX_ALIAS_LENGTH} characters; 'latest' and 'v<number>' (any case) "
    "are reserved by MLflow"
)
NAME_RULE = (
    "a model name must not be empty, longer than "
    f"{MAX_MODEL_NAME_LENGTH} characters, or contain '/', ':', '@', quotes or a backtick "
    "('/' and '@' separate a name from a version or an alias in 'name/3' and 'name@alias'), "
    "and must not start or end with a space"
)

# mlflow's fluent functions (log_model, load_model) read a process-wide tracking URI; this lock
# keeps two trackers in one process from swapping it under each other.
_GLOBAL_URI_LOCK = threading.RLock()


def default_tracking_uri(state_dir: Path) -> str:
    """Return the tracking URI a workspace uses.

    Args:
        state_dir: the workspace's state directory.

    Returns:
        ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<state_dir>/mlflow.db`` (absolute).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(state_dir) / "mlflow.db").absolute())


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def _is_valid_key(key: str) -> bool:
    return (
        bool(key)
        and len(key) <= MAX_KEY_LENGTH
        and _KEY_RE.match(key) is not None
        and not _path_not_unique(key)
    )


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def store_key(name: str) -> str:
    """Return the key under which a metric or parameter called ``name`` is stored in MLflow.

    A name MLflow accepts is kept as it is. Any other name gets its bad characters replaced by
    ``_`` and a suffix ``--<10 hex digits>`` taken from a hash of the original, so the mapping is
    deterministic and two names never share a key. A valid name that happens to end like such a
    suffix is mapped as well, so it cannot collide with a mapped one.

    Args:
        name: the metric or parameter name as the training code logged it.

    Returns:
        A key MLflow accepts.
    """
    if _is_valid_key(name) and not _MAPPED_SUFFIX_RE.search(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    base = _BAD_KEY_CHAR_RE.sub("_", name)
    parts = [p if p not in ("", ".", "..") else "_" for p in base.split("/")]
    base = "/".join(parts)[: MAX_KEY_LENGTH - 12]
    if base.endswith("/"):
        base = base[:-1] + "_"
    return f"{base}--{digest}"


def _nonfinite_key(key: str) -> str:
    return store_key(NONFINITE_PREFIX + key)


def _ms(t: float | None) -> int:
    return int((time.time() if t is None else t) * 1000)


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def validate_model_name(name: Any) -> str:
    """Return ``name`` if MLflow and model references accept it, else raise RegistryError."""
    if not isinstance(name, str) or not name.strip():
        raise RegistryError(f"invalid model name {name!r}: {NAME_RULE}")
    bad = [c for c in "/:@'\"`" if c in name]
    if bad or len(name) > MAX_MODEL_NAME_LENGTH or name != name.strip() or _path_not_unique(name):
        raise RegistryError(f"invalid model name {name!r}: {NAME_RULE}")
    return name


def validate_alias(alias: Any) -> str:
    """Return ``alias`` if MLflow accepts it as a model alias, else raise RegistryError."""
    if (
        not isinstance(alias, str)
        or not _ALIAS_RE.match(alias)
        or len(alias) > MAX_ALIAS_LENGTH
        or alias.lower() == "latest"
        or _VERSION_ALIAS_RE.match(alias)
    ):
        raise RegistryError(f"invalid alias {alias!r}: {ALIAS_RULE}")
    return alias


def validate_tag_key(key: Any) -> str:
    """Return ``key`` if MLflow accepts it as a tag key, else raise RegistryError."""
    if not isinstance(key, str) or not _is_valid_key(key):
        raise RegistryError(f"invalid tag key {key!r}: {KEY_RULE}")
    return key


def _validate_tag_value(key: str, value: Any) -> str:
    text = _stringify(value)
    if len(text) > MAX_VERSION_TAG_VALUE_LENGTH:
        raise RegistryError(
            f"the value of tag {key!r} has {len(text)} characters; a model version tag value "
            f"may have at most {MAX_VERSION_TAG_VALUE_LENGTH}"
        )
    return text


def normalize_version(version: Any) -> str:
    """Return a model version as the string MLflow uses: ``3`` and ``"3"`` both give ``"3"``."""
    if isinstance(version, bool):
        raise RegistryError(f"invalid model version {version!r}: give a positive integer like 3")
    if isinstance(version, int):
        text = str(version)
    elif isinstance(version, str):
        text = version.strip()
    else:
        raise RegistryError(f"invalid model version {version!r}: give a positive integer like 3")
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"invalid model version {version!r}: give a positive integer like 3")
    return str(int(text))


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def _is_not_found(exc: BaseException) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in _error_code(exc) or "NOT_FOUND" in _error_code(exc)


def _is_already_exists(exc: BaseException) -> bool:
    return "ALREADY_EXISTS" in _error_code(exc)


def _is_bad_request(exc: BaseException) -> bool:
    return "INVALID_PARAMETER_VALUE" in _error_code(exc)


@contextlib.contextmanager
def _global_uris(tracking_uri: str) -> Iterator[None]:
    """Point mlflow's process-wide tracking and registry URIs at ``tracking_uri`` for a while."""
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    with _GLOBAL_URI_LOCK:
        old_tracking = _tracking_service.utils._tracking_uri
        old_registry = _model_registry.utils._registry_uri
        old_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            _tracking_service.utils._tracking_uri = old_tracking
            _model_registry.utils._registry_uri = old_registry
            for key, value in old_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def unreachable(exc: BaseException, tracking_uri: str) -> TrackingUnavailable | None:
    """The error to raise instead of ``exc`` when it says that the tracking server is down.

    MLflow's REST client turns a refused or timed-out connection (after its retries) into an
    ``MlflowException`` whose context is the ``requests`` error; that context is looked for.
    """
    import requests

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return TrackingUnavailable(
                f"the MLflow tracking server at {tracking_uri} cannot be reached "
                f"({type(cause).__name__}); start it, or point MLFLOW_TRACKING_URI (or "
                "TrainingManagerApp.tracking_uri) at one that runs"
            )
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class _ServerCalls:
    """An ``MlflowClient`` whose calls raise :class:`TrackingUnavailable` when the server is down.

    Every other error passes through unchanged, so callers still tell a missing model from a
    refused request.
    """

    def __init__(self, client: Any, tracking_uri: str) -> None:
        self._client = client
        self._tracking_uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except Exception as exc:
                down = unreachable(exc, self._tracking_uri)
                if down is None:
                    raise
                raise down from exc

        return call


class Tracker:
    """A thin facade over one MLflow tracking store and its model registry.

    The MLflow client is created on first use. Every method that a training job calls while it
    runs (:meth:`log_params`, :meth:`log_metric_events`) logs a warning instead of raising, so
    tracking trouble never stops training.

    Args:
        tracking_uri: MLflow tracking URI; ``None`` uses :func:`default_tracking_uri` of the
            state directory (``TML_STATE_DIR`` or ``.training-manager``).
        artifact_root: where new experiments keep their artifacts. For a SQLite store the
            default is ``mlartifacts/`` beside the database file; for a tracking server the
            server decides.

    Example::

        tracker = Tracker("sqlite:///state/mlflow.db")
        run_id = tracker.start_run("digits", "digits-mlp", {"tml.job_id": "3f9a1c2b7d10"})
        tracker.log_metric_events(run_id, [{"type": "metric", "step": 1, "key": "loss",
                                            "value": 0.5, "t": 1733300001.5}])
        tracker.end_run(run_id, "succeeded")
    """

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None) -> None:
        if tracking_uri is None:
            state_dir = Path(os.environ.get("TML_STATE_DIR") or ".training-manager")
            tracking_uri = default_tracking_uri(state_dir)
        self.tracking_uri = tracking_uri
        db = _sqlite_path(tracking_uri)
        if artifact_root is None and db is not None:
            artifact_root = str(db.absolute().parent / "mlartifacts")
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()
        self._names: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r})"

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, created on first use."""
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                db = _sqlite_path(self.tracking_uri)
                if db is not None:
                    db.parent.mkdir(parents=True, exist_ok=True)
                client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
                self._client = cast("MlflowClient", _ServerCalls(client, self.tracking_uri))
            return self._client

    def ensure_store(self) -> None:
        """Create the store and its schema now, so that processes started later do not race.

        A new SQLite store runs its schema migrations on first use, which takes seconds; call
        this once before starting jobs that share the store.
        """
        self.client.search_experiments(max_results=1)
        self.client.search_registered_models(max_results=1)

    # Runs -------------------------------------------------------------------------------------

    def _experiment_id(self, experiment: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.artifact_root is not None:
            location = (
                self.artifact_root.rstrip("/")
                + "/"
                + hashlib.sha1(experiment.encode()).hexdigest()[:12]
            )
        try:
            return str(self.client.create_experiment(experiment, artifact_location=location))
        except Exception as exc:
            # Another process created it between our lookup and our insert.
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                raise
            logger.debug("experiment %s created concurrently: %s", experiment, exc)
            return str(found.experiment_id)

    def start_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        """Create an MLflow run, and its experiment if missing.

        Args:
            experiment: experiment name.
            run_name: the run's display name.
            tags: run tags (values are turned into strings).

        Returns:
            The new run's id.
        """
        experiment_id = self._experiment_id(experiment)
        clean = {validate_tag_key(k): _stringify(v)[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}
        run = self.client.create_run(experiment_id, run_name=run_name, tags=clean)
        logger.info("MLflow run %s started in experiment %s", run.info.run_id, experiment)
        return str(run.info.run_id)

    def end_run(self, run_id: str, status: str) -> None:
        """Mark a run as ended.

        Args:
            run_id: the run.
            status: the job's final status: ``succeeded``, ``failed`` or ``cancelled``.
        """
        if status not in _STATUS_TO_MLFLOW:
            raise ValueError(
                f"unknown final status {status!r}; expected one of {sorted(_STATUS_TO_MLFLOW)}"
            )
        self.client.set_terminated(run_id, status=_STATUS_TO_MLFLOW[status])

    def _retry(self, what: str, call: Any, attempts: int = 4) -> Any:
        for attempt in range(attempts):
            try:
                return call()
            except Exception as exc:
                if _is_bad_request(exc) or attempt == attempts - 1:
                    raise
                logger.debug("%s failed (attempt %d), retrying: %s", what, attempt + 1, exc)
                time.sleep(0.05 * (2**attempt) + random.random() * 0.05)
        return None

    # Names ------------------------------------------------------------------------------------

    def _record_names(self, run_id: str, mapping: dict[str, str]) -> None:
        """Remember which original name each mapped key stands for, in a tag and an artifact."""
        known = self._names.setdefault(run_id, {})
        new = {k: v for k, v in mapping.items() if k != v and known.get(k) != v}
        if not new:
            return
        if not known:
            known.update(self.original_names(run_id))
        known.update(new)
        text = json.dumps(known, sort_keys=True)
        self.client.log_text(run_id, text, NAMES_FILE)
        from mlflow.entities import RunTag

        tag = text if len(text) <= MAX_TAG_VALUE_LENGTH else f"see artifact {NAMES_FILE}"
        self.client.log_batch(run_id, tags=[RunTag(NAMES_TAG, tag)])

    def original_names(self, run_id: str) -> dict[str, str]:
        """Return ``{stored key: original name}`` for the names this run had to map."""
        run = self.client.get_run(run_id)
        text = run.data.tags.get(NAMES_TAG)
        if text is None:
            return {}
        if text.startswith("{"):
            return dict(json.loads(text))
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, NAMES_FILE, tmp)
            return dict(json.loads(Path(path).read_text()))

    # Params and metrics -----------------------------------------------------------------------

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log parameters; never raises.

        Values become strings. A value longer than MLflow allows is cut, ends with a marker
        naming the artifact that holds the whole value, and one warning lists the cut keys.

        Args:
            run_id: the run.
            params: parameter names and values.
        """
        try:
            self._log_params(run_id, params)
        except Exception as exc:
            logger.warning("could not log parameters to MLflow run %s: %s", run_id, exc)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        mapping: dict[str, str] = {}
        entries: list[Param] = []
        truncated: list[str] = []
        for name, value in params.items():
            key = store_key(str(name))
            mapping[key] = str(name)
            text = _stringify(value)
            if len(text) > MAX_PARAM_VALUE_LENGTH:
                artifact = f"{PARAMS_DIR}/{key.replace('/', '_')}.txt"
                self.client.log_text(run_id, text, artifact)
                marker = f"...[truncated; full value in artifact {artifact}]"
                text = text[: MAX_PARAM_VALUE_LENGTH - len(marker)] + marker
                truncated.append(str(name))
            entries.append(Param(key, text))
        if truncated:
            logger.warning(
                "parameters %s are longer than MLflow's %d characters; stored truncated, full "
                "values saved as artifacts under %s/",
                ", ".join(truncated),
                MAX_PARAM_VALUE_LENGTH,
                PARAMS_DIR,
            )
        self._record_names(run_id, mapping)
        for i in range(0, len(entries), _PARAMS_PER_BATCH):
            batch = entries[i : i + _PARAMS_PER_BATCH]
            self._retry("log params", lambda b=batch: self.client.log_batch(run_id, params=b))

    def log_metric_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """Log metric events of a job's event stream in batches; never raises.

        Events of other types are skipped. NaN, +inf and -inf are stored as NaN (so MLflow
        never clamps them to the largest double) plus a companion series
        ``tml.nonfinite/<key>`` whose value says which one it was (0 NaN, 1 +inf, -1 -inf);
        :meth:`metric_history` puts them back together. A name MLflow refuses is stored under
        :func:`store_key` and the original kept in the run's ``tml.names`` tag.

        Args:
            run_id: the run.
            events: events as written to ``events.jsonl``.
        """
        try:
            self._log_metric_events(run_id, events)
        except Exception as exc:
            logger.warning("could not log %d events to MLflow run %s: %s", len(events), run_id, exc)

    def _log_metric_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        metrics: list[Metric] = []
        mapping: dict[str, str] = {}
        for event in events:
            if event.get("type", "metric") != "metric":
                continue
            try:
                name = str(event["key"])
                value = _event_value(event)
                step = int(event.get("step") or 0)
                timestamp = _ms(event.get("t"))
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("skipping malformed metric event %r: %s", event, exc)
                continue
            key = store_key(name)
            mapping[key] = name
            if math.isfinite(value):
                metrics.append(Metric(key, value, timestamp, step))
                continue
            marker = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            metrics.append(Metric(key, math.nan, timestamp, step))
            companion = _nonfinite_key(key)
            mapping[companion] = NONFINITE_PREFIX + name
            metrics.append(Metric(companion, _NONFINITE_CODES[marker], timestamp, step))
        if not metrics:
            return
        self._record_names(run_id, mapping)
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            batch = metrics[i : i + _METRICS_PER_BATCH]
            self._retry("log metrics", lambda b=batch: self.client.log_batch(run_id, metrics=b))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Return ``(step, value)`` of one metric in step order, NaN and infinities restored.

        Args:
            run_id: the run.
            key: the metric name as logged (an original name or its stored key).
        """
        return [(step, value) for step, _, value in self._history(run_id, key)]

    def _history(self, run_id: str, key: str) -> list[tuple[int, int, float]]:
        stored = store_key(key)
        points = self.client.get_metric_history(run_id, stored)
        if not points and stored != key:
            # The caller may hold the stored key of a mapped name rather than the original.
            stored = key
            points = self.client.get_metric_history(run_id, stored)
        codes: dict[tuple[int, int], float] = {}
        if any(math.isnan(p.value) for p in points):
            for p in self.client.get_metric_history(run_id, _nonfinite_key(stored)):
                codes[(p.step, p.timestamp)] = p.value
        out = []
        for p in points:
            value = p.value
            if math.isnan(value):
                value = _NONFINITE_VALUES.get(codes.get((p.step, p.timestamp), 0.0), math.nan)
            out.append((int(p.step), int(p.timestamp), value))
        out.sort(key=lambda item: (item[0], item[1]))
        return out

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Return the last value of each metric of a run, by original name, non-finite restored."""
        run = self.client.get_run(run_id)
        names = self._names_for(run_id, run.data.tags)
        out: dict[str, float] = {}
        for key, value in sorted(run.data.metrics.items()):
            if key.startswith(NONFINITE_PREFIX) or names.get(key, "").startswith(NONFINITE_PREFIX):
                continue
            if math.isnan(value):
                history = self._history(run_id, key)
                value = history[-1][2] if history else value
            out[names.get(key, key)] = value
        return out

    def _names_for(self, run_id: str, tags: dict[str, str]) -> dict[str, str]:
        if NAMES_TAG not in tags:
            return {}
        try:
            return self.original_names(run_id)
        except Exception as exc:
            logger.warning("could not read the metric names of run %s: %s", run_id, exc)
            return {}

    # Models and lineage -----------------------------------------------------------------------

    def log_model(self, run_id: str, model: torch.nn.Module) -> str:
        """Log a PyTorch model into a run as an MLflow model.

        Args:
            run_id: the run.
            model: the trained module (a LightningModule included); pickled with cloudpickle,
                so a class defined in a notebook cell works.

        Returns:
            The model URI (``models:/m-...``) that :meth:`register_model` accepts.
        """
        import mlflow.pytorch
        import torch

        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        try:
            import lightning

            requirements.append(f"lightning=={lightning.__version__}")
        except ImportError:
            pass
        # MLflow files a new logged model under the active experiment (the default one, with
        # its artifacts in ./mlruns of the working folder), not the run's; create it in the
        # run's experiment so its artifacts live beside the run's.
        experiment_id = self.client.get_run(run_id).info.experiment_id
        logged = self.client.create_logged_model(
            experiment_id=experiment_id, name="model", source_run_id=run_id
        )
        with _global_uris(self.tracking_uri):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                run_id=run_id,
                model_id=logged.model_id,
                pip_requirements=requirements,
                # MLflow 3 defaults to a traced graph, which needs an input example and cannot
                # hold a LightningModule's Python logic; pickle keeps the module as it is.
                serialization_format="pickle",
            )
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(MODEL_URI_TAG, info.model_uri)])
        logger.info("model logged to MLflow run %s as %s", run_id, info.model_uri)
        return str(info.model_uri)

    def log_lineage(self, run_id: str, lineage: dict[str, Any]) -> None:
        """Save a job's lineage as the run artifact ``lineage.json`` and a few run tags.

        Args:
            run_id: the run.
            lineage: JSON-serialisable dict; the keys read here are ``job_id`` (or ``job``
                with an ``id``), ``code``
                (``sha256``, ``git``: ``commit``, ``dirty``) and ``checkpoint``. See
                :func:`describe_code` for the ``code`` part.
        """
        from mlflow.entities import RunTag

        self.client.log_text(run_id, json.dumps(lineage, indent=2, default=str), LINEAGE_FILE)
        tags = {}
        code = lineage.get("code") or {}
        # Accept both a nested "git" dict (describe_code) and flat git_commit/git_dirty keys.
        git = code.get("git") or {"commit": code.get("git_commit"), "dirty": code.get("git_dirty")}
        job_id = _lineage_job_id(lineage)
        if job_id:
            tags[JOB_ID_TAG] = job_id
        if code.get("sha256"):
            tags[CODE_HASH_TAG] = str(code["sha256"])
        if git.get("commit"):
            tags[GIT_COMMIT_TAG] = str(git["commit"])
            tags[GIT_DIRTY_TAG] = str(bool(git.get("dirty"))).lower()
        if lineage.get("checkpoint"):
            tags[CHECKPOINT_TAG] = str(lineage["checkpoint"])[:MAX_TAG_VALUE_LENGTH]
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    # Registry ---------------------------------------------------------------------------------

    def register_model(
        self,
        *,
        run_id: str,
        model_uri: str,
        name: str,
        job_id: str,
        tags: dict[str, str] | None = None,
        alias: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Register a run's model as a new version of ``name``, once per job.

        Names, the alias and tag keys are checked before the store is contacted. Registering
        the same job again returns its existing version (tags, alias and description given
        again are applied to it). Concurrent registrations get distinct consecutive versions.

        Args:
            run_id: the run that logged the model.
            model_uri: what :meth:`log_model` returned.
            name: registered model name.
            job_id: the job that trained the model.
            tags: model version tags.
            alias: an alias to point at the version.
            description: the version's description.

        Returns:
            The version as :meth:`get_version` describes it.

        Raises:
            RegistryError: a name, alias or tag that MLflow would refuse.
        """
        validate_model_name(name)
        if alias is not None:
            validate_alias(alias)
        clean_tags = {
            validate_tag_key(k): _validate_tag_value(k, v) for k, v in (tags or {}).items()
        }
        if not isinstance(job_id, str) or not job_id:
            raise RegistryError(
                f"invalid job id {job_id!r}: give the id of the job that trained it"
            )
        if not isinstance(model_uri, str) or not model_uri:
            raise RegistryError(f"invalid model URI {model_uri!r}: give what log_model returned")

        self._ensure_registered_model(name)
        existing = self._versions_of_job(name, job_id)
        if existing:
            version = str(existing[0].version)
        else:
            version = self._create_version(name, model_uri, run_id, job_id, description)

        for key, value in clean_tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        if description is not None and existing:
            self.client.update_model_version(name, version, description=description)
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, version)
        return self.get_version(name, version)

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
            return
        except Exception as exc:
            if not _is_not_found(exc):
                raise
        try:
            self.client.create_registered_model(name)
        except Exception as exc:
            # Lost a race with another registration of the same name: fine if it exists now.
            try:
                self.client.get_registered_model(name)
            except Exception:
                raise exc from None

    def _versions_of_job(self, name: str, job_id: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(
            f"name = '{name}' and tags.`{JOB_ID_TAG}` = '{_quote(job_id)}'"
        )
        return sorted(found, key=lambda v: int(v.version))

    def _create_version(
        self, name: str, model_uri: str, run_id: str, job_id: str, description: str | None
    ) -> str:
        from mlflow.store.artifact.utils.models import _parse_model_id_if_present

        model_id = _parse_model_id_if_present(model_uri)
        created = None
        for attempt in range(8):
            try:
                with self._store_uses_global_uri():
                    created = self.client.create_model_version(
                        name,
                        source=model_uri,
                        run_id=run_id,
                        tags={JOB_ID_TAG: job_id},
                        description=description,
                        await_creation_for=0,
                        model_id=model_id,
                    )
                break
            except Exception as exc:
                if _is_bad_request(exc) or _is_not_found(exc) or attempt == 7:
                    raise
                # Concurrent registrations on one SQLite store race for the next number.
                logger.debug("model version creation raced (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.05 * (2 ** min(attempt, 4)) + random.random() * 0.1)
                if self._versions_of_job(name, job_id):
                    break
        # Two registrations of the same job at the same moment: keep the lowest version.
        versions = self._versions_of_job(name, job_id)
        for extra in versions[1:]:
            self.client.delete_model_version(name, str(extra.version))
        if versions:
            return str(versions[0].version)
        assert created is not None
        return str(created.version)

    def _store_uses_global_uri(self) -> contextlib.AbstractContextManager[None]:
        # MLflow's local registry store looks a models:/m-... source up through the process-wide
        # tracking URI; a tracking server resolves it on its own side.
        if self.tracking_uri.startswith(("http://", "https://")):
            return contextlib.nullcontext()
        return _global_uris(self.tracking_uri)

    def _model_version(self, name: str, version: Any) -> ModelVersion:
        validate_model_name(name)
        number = normalize_version(version)
        try:
            return self.client.get_model_version(name, number)
        except Exception as exc:
            if _is_not_found(exc):
                raise ModelNotFound(
                    f"model {name!r} has no version {number}; list_versions({name!r}) shows them"
                ) from exc
            raise

    def get_version(self, name: str, version: int | str) -> dict[str, Any]:
        """Describe one model version.

        Returns:
            ``name``, ``version`` (a string), ``aliases``, ``tags`` (without the internal job
            tag), ``run_id``, ``job_id``, ``description``, ``created_at`` (seconds since the
            epoch), ``source`` (the model URI), ``status``.
        """
        return _version_dict(self._model_version(name, version))

    def list_models(self) -> list[dict[str, Any]]:
        """Return every registered model: name, description, aliases, latest version, updated."""
        models = []
        token = None
        while True:
            page = self.client.search_registered_models(max_results=200, page_token=token)
            for model in page:
                aliases = dict(getattr(model, "aliases", {}) or {})
                latest = max((int(v.version) for v in (model.latest_versions or [])), default=None)
                models.append(
                    {
                        "name": model.name,
                        "description": model.description or "",
                        "aliases": {k: str(v) for k, v in aliases.items()},
                        "latest_version": None if latest is None else str(latest),
                        "updated_at": (model.last_updated_timestamp or 0) / 1000,
                    }
                )
            token = page.token
            if not token:
                break
        return sorted(models, key=lambda m: m["name"])

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Return every version of a model, oldest first.

        Raises:
            ModelNotFound: no model has this name.
        """
        validate_model_name(name)
        model = self._registered_model(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        versions = sorted((_version_dict(v) for v in found), key=lambda v: int(v["version"]))
        # A version search does not fill in aliases on every store; the model knows them all.
        by_version: dict[str, list[str]] = {}
        for alias, number in (getattr(model, "aliases", None) or {}).items():
            by_version.setdefault(str(number), []).append(alias)
        for version in versions:
            version["aliases"] = sorted(by_version.get(version["version"], []))
        return versions

    def _registered_model(self, name: str) -> Any:
        try:
            return self.client.get_registered_model(name)
        except Exception as exc:
            if _is_not_found(exc):
                raise ModelNotFound(
                    f"no registered model named {name!r}; list_models() shows the registered ones"
                ) from exc
            raise

    def set_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``alias`` at a version (moving it if it pointed elsewhere)."""
        validate_model_name(name)
        validate_alias(alias)
        mv = self._model_version(name, version)
        self.client.set_registered_model_alias(name, alias, str(mv.version))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias from a model.

        Raises:
            ModelNotFound: the model has no such alias.
        """
        validate_model_name(name)
        validate_alias(alias)
        model = self._registered_model(name)
        if alias not in (getattr(model, "aliases", {}) or {}):
            raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
        self.client.delete_registered_model_alias(name, alias)

    def set_version_tag(self, name: str, version: int | str, key: str, value: str) -> None:
        """Set a tag on a model version."""
        validate_model_name(name)
        validate_tag_key(key)
        text = _validate_tag_value(key, value)
        mv = self._model_version(name, version)
        self.client.set_model_version_tag(name, str(mv.version), key, text)

    def delete_version_tag(self, name: str, version: int | str, key: str) -> None:
        """Remove a tag from a model version.

        Raises:
            ModelNotFound: the version has no such tag.
        """
        validate_model_name(name)
        validate_tag_key(key)
        mv = self._model_version(name, version)
        if key not in (mv.tags or {}):
            raise ModelNotFound(f"version {mv.version} of model {name!r} has no tag {key!r}")
        self.client.delete_model_version_tag(name, str(mv.version), key)

    def set_description(self, name: str, version: int | str, text: str) -> None:
        """Replace a model version's description."""
        mv = self._model_version(name, version)
        self.client.update_model_version(name, str(mv.version), description=str(text))

    def resolve(self, ref: str) -> dict[str, Any]:
        """Return the version a reference names: ``name@alias``, ``name/3``, ``name`` (latest).

        ``models:/name@alias`` and ``models:/name/3`` are accepted too.

        Raises:
            ModelNotFound: nothing matches.
            RegistryError: the reference is malformed.
        """
        if not isinstance(ref, str) or not ref:
            raise RegistryError(
                f"invalid model reference {ref!r}: use 'name', 'name/3' or 'name@alias'"
            )
        text = ref[len("models:/") :] if ref.startswith("models:/") else ref
        if "@" in text:
            name, alias = text.split("@", 1)
            validate_model_name(name)
            validate_alias(alias)
            try:
                mv = self.client.get_model_version_by_alias(name, alias)
            except Exception as exc:
                if _is_not_found(exc) or _is_bad_request(exc):
                    self._registered_model(name)
                    raise ModelNotFound(f"model {name!r} has no alias {alias!r}") from exc
                raise
            return _version_dict(mv)
        if "/" in text:
            name, version = text.split("/", 1)
            if version == "latest":
                return self._latest(name)
            return self.get_version(name, version)
        return self._latest(text)

    def _latest(self, name: str) -> dict[str, Any]:
        versions = self.list_versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions yet")
        return versions[-1]

    def load_model(self, ref: str) -> torch.nn.Module:
        """Load a registered model as a torch module.

        Args:
            ref: ``name@alias``, ``name/3``, ``name`` (its latest version), or ``models:/...``
                (a registry reference or a logged model id such as ``models:/m-...``).
        """
        import mlflow.pytorch
        import torch

        uri = ref
        text = ref[len("models:/") :] if ref.startswith("models:/") else None
        if text is None or "/" in text or "@" in text:
            version = self.resolve(ref)
            uri = f"models:/{version['name']}/{version['version']}"
        kwargs = {} if torch.cuda.is_available() else {"map_location": "cpu"}
        with _global_uris(self.tracking_uri):
            return mlflow.pytorch.load_model(uri, **kwargs)

    def lineage(self, name: str, version: int | str) -> dict[str, Any]:
        """Return where a version came from: its run, job, code and checkpoint.

        Returns:
            ``model`` (the version), ``run`` (id, experiment, status, times, params, tags),
            ``job_id``, and what the job recorded with :meth:`log_lineage`: ``job``,
            ``code`` (the model's), ``datamodule`` (its code, for a job that had one) and
            ``checkpoint`` (``None`` where nothing was recorded).
        """
        mv = self.get_version(name, version)
        out: dict[str, Any] = {
            "model": mv,
            "run": None,
            "job_id": mv["job_id"],
            "job": None,
            "code": None,
            "checkpoint": None,
        }
        if not mv["run_id"]:
            return out
        run = self.client.get_run(mv["run_id"])
        names = self._names_for(run.info.run_id, run.data.tags)
        out["run"] = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "start_time": (run.info.start_time or 0) / 1000,
            "end_time": None if run.info.end_time is None else run.info.end_time / 1000,
            "duration": None
            if run.info.end_time is None or run.info.start_time is None
            else (run.info.end_time - run.info.start_time) / 1000,
            "params": {names.get(k, k): v for k, v in run.data.params.items()},
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        }
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.client.download_artifacts(run.info.run_id, LINEAGE_FILE, tmp)
                recorded = json.loads(Path(path).read_text())
        except Exception as exc:
            logger.debug("run %s has no readable %s: %s", run.info.run_id, LINEAGE_FILE, exc)
            recorded = {}
        for key, value in recorded.items():
            if key != "model":
                out[key] = value
        if out["code"] is None and isinstance(recorded.get("model"), dict):
            # Runs logged before the model's code was recorded as "code".
            out["code"] = recorded["model"]
        out["job_id"] = mv["job_id"] or _lineage_job_id(recorded)
        return out

    def compare(self, name: str, versions: Sequence[int | str]) -> pandas.DataFrame:
        """Put the last value of every metric of several versions side by side.

        Returns:
            One row per metric (original names), one column per version (``"1"``, ``"3"``);
            a metric that a version lacks is NaN.
        """
        import pandas

        columns: dict[str, dict[str, float]] = {}
        for version in versions:
            mv = self.get_version(name, version)
            columns[mv["version"]] = self.run_metrics(mv["run_id"]) if mv["run_id"] else {}
        frame = pandas.DataFrame(columns)
        frame.index.name = "metric"
        return frame.sort_index()


def _lineage_job_id(lineage: dict[str, Any]) -> str | None:
    job = lineage.get("job")
    job_id = lineage.get("job_id") or (job.get("id") if isinstance(job, dict) else None)
    return str(job_id) if job_id else None


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _event_value(event: dict[str, Any]) -> float:
    marker = event.get("nonfinite")
    if marker is not None:
        if marker not in _NONFINITE_CODES:
            raise ValueError(f"unknown nonfinite marker {marker!r}")
        return float(marker)
    value = event["value"]
    if isinstance(value, bool) or value is None:
        raise ValueError(f"metric value {value!r} is not a number")
    return float(value)


def _version_dict(mv: ModelVersion) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    job_id = tags.pop(JOB_ID_TAG, None)
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(getattr(mv, "aliases", []) or []),
        "tags": tags,
        "run_id": mv.run_id or None,
        "job_id": job_id,
        "description": mv.description or "",
        "created_at": (mv.creation_timestamp or 0) / 1000,
        "source": mv.source,
        "status": str(mv.status),
    }


def describe_code(obj: Any) -> dict[str, Any]:
    """Describe the code that defines ``obj``: a notebook cell, a script or a module file.

    Args:
        obj: a class, a function, or an instance of a class.

    Returns:
        ``kind`` (``"cell"``, ``"file"`` or ``"unknown"``), ``qualname``, ``path`` (the file, or
        the cell's name in the kernel), ``source`` (the whole cell or file), ``sha256`` of the
        source, and ``git`` (``commit``, ``dirty``, ``root``) when the file lies in a git
        working tree (for a cell: the kernel's working directory), else ``None``.
    """
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    info: dict[str, Any] = {
        "kind": "unknown",
        "qualname": f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}",
        "path": None,
        "source": None,
        "sha256": None,
        "git": None,
    }
    filename = _defining_file(target)
    if filename is None:
        return info
    lines = linecache.getlines(filename)
    on_disk = Path(filename).is_file() and not _is_kernel_cell(filename)
    if on_disk:
        source = Path(filename).read_text(errors="replace")
        info.update(kind="file", path=str(Path(filename).absolute()))
        git_dir = Path(filename).absolute().parent
    elif lines:
        source = "".join(lines)
        info.update(kind="cell", path=filename)
        git_dir = Path.cwd()
    else:
        return info
    info["source"] = source
    info["sha256"] = hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()
    info["git"] = _git_state(git_dir, Path(filename) if on_disk else None)
    return info


def _is_kernel_cell(filename: str) -> bool:
    # ipykernel compiles each cell under a file name of its own (ipykernel_<pid>/<hash>.py);
    # IPython without the kernel uses "<ipython-input-...>".
    return "ipykernel_" in filename or filename.startswith("<ipython-input")


def _defining_file(target: Any) -> str | None:
    try:
        return inspect.getsourcefile(target) or inspect.getfile(target)
    except (TypeError, OSError):
        pass
    # A class defined in a notebook cell lives in __main__, which has no file; its methods
    # still know the cell they were compiled from.
    for member in vars(target).values() if inspect.isclass(target) else ():
        func = getattr(member, "__func__", member)
        code = getattr(func, "__code__", None)
        if code is not None:
            return str(code.co_filename)
    return None


def _git_state(folder: Path, file: Path | None) -> dict[str, Any] | None:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    file_status = git("status", "--porcelain", "--", str(file)) if file is not None else None
    return {
        "commit": commit,
        "dirty": bool(status),
        "file_dirty": None if file is None else bool(file_status),
        "root": git("rev-parse", "--show-toplevel"),
    }
