"""Entry points: how a model or data module given in the kernel reaches the ranks, and back."""

from __future__ import annotations

import functools
import inspect
import pickle
from typing import Any

import cloudpickle

from .errors import JobSpecError
from .spec import resolve_reference
from .tracking import describe_code

ENTRY_FILE = "entry.pkl"


def _lightning() -> Any:
    import lightning.pytorch as pl

    return pl


def check_entry(obj: Any, what: str, base_dir: str | None = None) -> Any:
    """Check that ``obj`` gives a LightningModule (``what="model"``) or LightningDataModule.

    Accepts a subclass, an instance, a zero-argument factory or a ``"module:attr"`` string
    naming one of those. Returns the resolved object (the string resolved).
    """
    pl = _lightning()
    expected = pl.LightningModule if what == "model" else pl.LightningDataModule
    label = expected.__name__
    resolved = resolve_reference(obj, base_dir) if isinstance(obj, str) else obj

    if inspect.isclass(resolved):
        if not issubclass(resolved, expected):
            raise JobSpecError(
                f"{what} must be a {label} subclass, instance or zero-argument factory; "
                f"got the class {resolved.__qualname__}, which does not derive from {label}"
            )
        return resolved
    if isinstance(resolved, expected):
        return resolved
    if inspect.isroutine(resolved) or isinstance(resolved, functools.partial):
        _check_factory(resolved, what, label, expected)
        return resolved
    raise JobSpecError(
        f"{what} must be a {label} subclass, instance or zero-argument factory; "
        f"got {type(resolved).__name__} {resolved!r:.80}"
    )


def _check_factory(factory: Any, what: str, label: str, expected: type) -> None:
    signature = inspect.signature(factory)
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise JobSpecError(
            f"{what} factory {getattr(factory, '__qualname__', factory)!r} must take no "
            f"arguments, but it requires {required}; wrap it, e.g. lambda: factory(...)"
        )
    try:
        built = factory()
    except Exception as exc:
        raise JobSpecError(
            f"{what} factory {getattr(factory, '__qualname__', factory)!r} raised {exc!r}"
        ) from exc
    if not isinstance(built, expected):
        raise JobSpecError(
            f"{what} factory {getattr(factory, '__qualname__', factory)!r} returned "
            f"{type(built).__name__}, not a {label}"
        )


def pickle_entry(model: Any, datamodule: Any) -> bytes:
    """Serialise the entry by value, naming the object that cannot be pickled."""
    parts = {"model": model, "datamodule": datamodule}
    for what, obj in parts.items():
        if obj is None:
            continue
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            culprit = _find_unpicklable(obj)
            where = f" (the attribute {culprit})" if culprit else ""
            raise JobSpecError(
                f"{what} cannot be sent to the job's processes{where}: {exc}. Keep open "
                "files, locks, sockets and live connections out of the module; create them "
                "in setup() or __init__ instead"
            ) from exc
    return cloudpickle.dumps(parts)


def _find_unpicklable(obj: Any, path: str = "", depth: int = 0) -> str | None:
    attributes = getattr(obj, "__dict__", None)
    if depth > 3 or not isinstance(attributes, dict):
        return None
    for name, value in attributes.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            deeper = _find_unpicklable(value, f"{path}.{name}", depth + 1)
            return deeper or f"{path}.{name}".lstrip(".") + f" of type {type(value).__name__}"
    return None


def lineage_of(
    model: Any, resolved_model: Any, datamodule: Any = None, resolved_datamodule: Any = None
) -> dict[str, Any]:
    """The code lineage of a job, taken where the user launched it.

    Args:
        model, datamodule: as the user gave them (objects, or ``"module:attr"`` strings).
        resolved_model, resolved_datamodule: the objects they name, as :func:`check_entry`
            returned them (so that a script is not run a second time).

    Returns:
        ``code``: the model's defining cell, script or module file (see
        :func:`~training_manager_lab.tracking.describe_code`: source, ``sha256``, ``git``),
        with ``reference`` when the model was named as a string; ``datamodule``: the same for
        the data module, when there is one.
    """
    lineage: dict[str, Any] = {"code": _code_of(model, resolved_model)}
    if datamodule is not None:
        lineage["datamodule"] = _code_of(datamodule, resolved_datamodule)
    return lineage


def _code_of(given: Any, resolved: Any) -> dict[str, Any]:
    code = describe_code(resolved)
    return {**code, "reference": given} if isinstance(given, str) else code


def instantiate(obj: Any) -> Any:
    """Turn a class or factory into an instance; an instance passes through."""
    pl = _lightning()
    if isinstance(obj, (pl.LightningModule, pl.LightningDataModule)):
        return obj
    return obj()


def load_entry(entry: dict[str, Any], job_dir: str, cwd: str | None) -> tuple[Any, Any]:
    """Inside a rank: return the (model, datamodule) instances the job trains."""
    if entry["kind"] == "pickle":
        with open(f"{job_dir}/{ENTRY_FILE}", "rb") as stream:
            try:
                parts = pickle.load(stream)
            except Exception as exc:
                raise JobSpecError(
                    f"the model sent by value cannot be loaded in the job process: {exc!r}. "
                    "Objects it refers to must be importable here too (same packages "
                    "installed) or defined in the notebook"
                ) from exc
        model, datamodule = parts["model"], parts.get("datamodule")
    else:
        model = resolve_reference(entry["model"], cwd)
        datamodule = entry.get("datamodule")
        datamodule = resolve_reference(datamodule, cwd) if datamodule else None
    return instantiate(model), instantiate(datamodule) if datamodule is not None else None
