"""Job specs: what a job runs and what it asks for, validated before anything starts."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import JobSpecError

STRATEGIES = (
    "auto",
    "ddp",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "fsdp",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
CLUSTERS = ("local", "slurm")

#: Trainer arguments that the job manager sets itself from the resource request.
RESERVED_TRAINER_ARGS = {
    "devices": "pass devices=... to launch()",
    "accelerator": "pass accelerator=... to launch()",
    "strategy": "pass strategy=... to launch()",
    "num_nodes": "pass cluster_options={'nodes': ...} with cluster='slurm'",
    "logger": "metrics go to the job's event stream and its MLflow run already",
    "enable_progress_bar": "jobs report progress through the live widget",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")
_REF_RE = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


@dataclass
class JobSpec:
    """Everything a job needs, in JSON-serialisable form.

    ``entry`` says where the model comes from: ``{"kind": "pickle"}`` (the model and data
    module travel by value in ``entry.pkl``), ``{"kind": "import", "model": "pkg.mod:attr",
    "datamodule": ...}`` or ``{"kind": "file", "model": "path/to/file.py:attr", ...}``.
    """

    name: str
    experiment: str
    entry: dict[str, Any]
    trainer: dict[str, Any] = field(default_factory=dict)
    devices: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    memory: int | None = None
    priority: int = 0
    cluster: str = "local"
    cluster_options: dict[str, Any] = field(default_factory=dict)
    cwd: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    stall_timeout: float | None = 1800.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Build and validate a spec from its JSON form (as posted to the REST API)."""
        if not isinstance(data, dict):
            raise JobSpecError(f"a job spec must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobSpecError(
                f"unknown job spec field(s) {unknown}; accepted fields are {sorted(known)}"
            )
        for required in ("name", "entry"):
            if required not in data:
                raise JobSpecError(f"a job spec needs {required!r}")
        spec = cls(**{key: data[key] for key in data})
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check every field; raise :class:`JobSpecError` naming the first problem."""
        check_name(self.name, "name")
        check_name(self.experiment, "experiment")
        if not isinstance(self.entry, dict) or self.entry.get("kind") not in (
            "pickle",
            "import",
            "file",
        ):
            raise JobSpecError(
                f"entry must be {{'kind': 'pickle' | 'import' | 'file', ...}}, got {self.entry!r}"
            )
        if self.entry["kind"] in ("import", "file"):
            for key in ("model", "datamodule"):
                value = self.entry.get(key)
                if value is None and key == "datamodule":
                    continue
                if not isinstance(value, str) or not _REF_RE.match(value):
                    raise JobSpecError(
                        f"entry {key} must be 'package.module:attr' or 'path/file.py:attr', "
                        f"got {value!r}"
                    )
        if isinstance(self.devices, bool) or not isinstance(self.devices, int):
            raise JobSpecError(f"devices must be a whole number, got {self.devices!r}")
        if self.devices < 1:
            raise JobSpecError(f"devices must be 1 or more, got {self.devices}")
        if self.accelerator not in ACCELERATORS:
            raise JobSpecError(
                f"accelerator must be one of {list(ACCELERATORS)}, got {self.accelerator!r}"
            )
        if self.strategy not in STRATEGIES:
            raise JobSpecError(
                f"unknown strategy {self.strategy!r}; jobs run one process per device, so the "
                f"accepted strategies are {list(STRATEGIES)}"
            )
        if self.memory is not None and (
            isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1
        ):
            raise JobSpecError(f"memory must be a number of bytes above 0, got {self.memory!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise JobSpecError(f"priority must be a whole number, got {self.priority!r}")
        if not -1000 <= self.priority <= 1000:
            raise JobSpecError(f"priority must lie between -1000 and 1000, got {self.priority}")
        if self.cluster not in CLUSTERS:
            raise JobSpecError(f"cluster must be one of {list(CLUSTERS)}, got {self.cluster!r}")
        if not isinstance(self.cluster_options, dict):
            raise JobSpecError("cluster_options must be a dict of scheduler options")
        if self.stall_timeout is not None and (
            isinstance(self.stall_timeout, bool)
            or not isinstance(self.stall_timeout, (int, float))
            or not 5 <= self.stall_timeout <= 7 * 86400
        ):
            raise JobSpecError(
                "stall_timeout must be None or a number of seconds between 5 and 604800, "
                f"got {self.stall_timeout!r}"
            )
        check_trainer_args(self.trainer)
        if not isinstance(self.lineage, dict):
            raise JobSpecError("lineage must be a dict")


def check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise JobSpecError(
            f"{what} must be 1-100 characters of letters, digits, space, '_', '.', '-', "
            f"starting with a letter or digit; got {value!r}"
        )


def check_trainer_args(trainer: Any) -> None:
    """Refuse Trainer arguments that are unknown, reserved or not JSON-serialisable."""
    if not isinstance(trainer, dict):
        raise JobSpecError(f"trainer must be a dict of Trainer arguments, got {trainer!r}")
    for key in trainer:
        if key in RESERVED_TRAINER_ARGS:
            raise JobSpecError(
                f"trainer argument {key!r} is set by the job manager: {RESERVED_TRAINER_ARGS[key]}"
            )
    try:
        json.dumps(trainer, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JobSpecError(
            f"trainer arguments must be plain JSON values (numbers, strings, lists, dicts): {exc}"
        ) from exc
    accepted = _trainer_parameters()
    unknown = sorted(set(trainer) - accepted) if accepted else []
    if unknown:
        raise JobSpecError(
            f"unknown Trainer argument(s) {unknown}; see lightning.pytorch.Trainer for the "
            "accepted ones"
        )


def _trainer_parameters() -> set[str]:
    # Only when Lightning is already imported: validating a spec must stay cheap in the
    # server, and the ranks check the arguments again when they build the Trainer.
    module = sys.modules.get("lightning.pytorch") or sys.modules.get("lightning")
    if module is None:
        return set()
    trainer = getattr(module, "Trainer", None)
    if trainer is None:
        return set()
    return set(inspect.signature(trainer.__init__).parameters) - {"self"}


def resolve_reference(reference: str, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """Import the object named by ``"package.module:attr"`` or ``"path/file.py:attr"``."""
    match = _REF_RE.match(reference) if isinstance(reference, str) else None
    if not match:
        raise JobSpecError(
            f"expected 'package.module:attr' or 'path/file.py:attr', got {reference!r}"
        )
    target, attr = match["target"], match["attr"]
    if target.endswith(".py"):
        path = Path(base_dir or ".") / target
        if not path.is_file():
            raise JobSpecError(f"script {target!r} not found (looked for {path})")
        module_name = f"_tml_script_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise JobSpecError(f"cannot load script {target!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise JobSpecError(f"script {target!r} raised while loading: {exc!r}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise JobSpecError(
                f"module {target!r} in {reference!r} cannot be imported ({exc}); check the "
                "name and that it is installed or on sys.path"
            ) from exc
        except Exception as exc:
            raise JobSpecError(f"module {target!r} raised while importing: {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise JobSpecError(f"{target!r} has no attribute {attr!r} (from {reference!r})")
        obj = getattr(obj, part)
    return obj
