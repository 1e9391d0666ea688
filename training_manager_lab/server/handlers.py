"""REST and websocket handlers of the server extension; domain errors become HTTP statuses here."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket
from tornado.ioloop import PeriodicCallback

from ..errors import (
    JobConflict,
    JobNotFound,
    JobSpecError,
    ModelNotFound,
    RegistryError,
    TrackingUnavailable,
    TrainingManagerError,
)
from ..events import EVENTS_FILE, read_events
from ..jobfiles import read_log

AUTH_RESOURCE = "training-manager"
PREFIX = "/training-manager/api"
_JOB_ID = r"(?P<job_id>[^/]+)"
_NAME = r"(?P<name>[^/]+)"
MAX_WAIT = 30.0
#: Seconds one inventory snapshot answers GET resources. The inventory carries a timestamp
#: and live gauges, so without this no two answers are equal and an ETag never matches;
#: it also bounds the cost of many tabs polling at once.
RESOURCES_TTL = 1.0
#: Seconds after a job's recorded end that a stream waits for its status event before it
#: sends one itself (a job recorded as failed by the manager, e.g. lost while the server was
#: down, has no process left to write it).
STREAM_END_GRACE = 3.0
OPENAPI_FILE = Path(__file__).with_name("openapi.json")


def _domain_errors(
    method: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    """Turn domain errors into JSON error responses; hide the unexpected behind a fixed text."""

    @functools.wraps(method)
    async def wrapper(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except web.HTTPError:
            raise
        except (JobNotFound, ModelNotFound) as exc:
            self.fail(404, "not found", str(exc))
        except JobConflict as exc:
            self.fail(409, "conflict", str(exc))
        except (JobSpecError, RegistryError) as exc:
            self.fail(400, "bad request", str(exc))
        except TrackingUnavailable as exc:
            self.log.warning("training-manager: %s", exc)
            self.fail(503, "tracking server unavailable", str(exc))
        except TrainingManagerError as exc:
            self.log.error("training-manager: %s", exc)
            self.fail(502, "backend error", str(exc))
        except Exception:
            self.log.exception("training-manager: unexpected error in %s", self.request.path)
            self.fail(
                500, "internal error", "the server could not complete the request; see its log"
            )

    return wrapper


class BaseHandler(ExtensionHandlerMixin, APIHandler):
    """Common ground of the API: the job manager, JSON bodies and errors."""

    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> Any:
        return self.settings["tml_manager"]

    def fail(self, status: int, error: str, detail: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": error, "detail": detail}))

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, allow_nan=False, default=str))

    def body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except json.JSONDecodeError as exc:
            raise JobSpecError(f"the request body is not valid JSON: {exc}") from exc

    def int_argument(self, name: str, default: int | None, low: int, high: int) -> int | None:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise JobSpecError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise JobSpecError(f"{name} must lie between {low} and {high}, got {value}")
        return value

    def job_folder(self, job_id: str) -> Path:
        """The folder of a known job; refused when it is not a plain folder of the state dir."""
        return checked_job_folder(self.manager, job_id)

    def kernels(self) -> list[dict[str, Any]]:
        """The kernels of this server and their process ids."""
        kernel_manager: Any = self.serverapp.kernel_manager if self.serverapp else None
        found = []
        for kernel_id in list(kernel_manager.list_kernel_ids()) if kernel_manager else []:
            try:
                kernel = kernel_manager.get_kernel(kernel_id)
                pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            except Exception:
                pid = None
            found.append({"kernel_id": kernel_id, "pid": pid})
        return found

    async def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking work off the event loop."""
        return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


def checked_job_folder(manager: Any, job_id: str) -> Path:
    """A job's folder, checked so that reading its files cannot leave it.

    The id is validated by the manager. A folder that is a symbolic link, or resolves
    anywhere but directly under the state directory's ``jobs/``, is refused.
    """
    folder = manager.job_dir(job_id)
    jobs_root = (Path(manager.state_dir) / "jobs").resolve()
    if folder.is_symlink() or folder.resolve().parent != jobs_root:
        raise JobSpecError(
            f"the folder of job {job_id} is not a plain folder of the state directory; "
            "its files are not served"
        )
    return folder


def events_path(folder: Path) -> Path:
    """A job's event stream; a symbolic link planted in its place is refused."""
    path = folder / EVENTS_FILE
    if path.is_symlink():
        raise JobSpecError(f"{EVENTS_FILE} of job {folder.name} is not a regular file")
    return path


class JobsHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self) -> None:
        status = self.get_argument("status", None) or None
        limit = self.int_argument("limit", 50, 1, 1000)
        offset = self.int_argument("offset", 0, 0, 10**9)
        jobs, total = await self.run(self.manager.list, status, limit, offset)
        self.reply({"jobs": jobs, "total": total})

    @web.authenticated
    @authorized
    @_domain_errors
    async def post(self) -> None:
        body = self.body()
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise JobSpecError('the body must be {"spec": {...}, "entry": "<base64>"?}')
        spec = dict(body["spec"])
        self._check_paths(spec)
        entry = None
        if body.get("entry") is not None:
            try:
                entry = base64.b64decode(body["entry"], validate=True)
            except (binascii.Error, TypeError) as exc:
                raise JobSpecError(f"entry must be base64 text: {exc}") from exc
        record = await self.run(self.manager.launch, spec, entry)
        self.reply(record, 201)

    def _check_paths(self, spec: dict[str, Any]) -> None:
        """Keep a job's working folder and script inside the server's root directory."""
        root = Path(self.settings["tml_root_dir"])
        cwd = spec.get("cwd") or str(root)
        if not isinstance(cwd, str):
            raise JobSpecError("cwd must be a folder path")
        folder = (root / cwd).resolve()
        if not folder.is_relative_to(root):
            raise JobSpecError(f"the job's folder {cwd!r} lies outside the server's root directory")
        spec["cwd"] = str(folder)
        entry = spec.get("entry")
        if isinstance(entry, dict) and entry.get("kind") == "file":
            for key in ("model", "datamodule"):
                reference = entry.get(key)
                if not isinstance(reference, str):
                    continue
                script = reference.rsplit(":", 1)[0]
                if not (folder / script).resolve().is_relative_to(root):
                    raise JobSpecError(
                        f"script {script!r} lies outside the server's root directory"
                    )


class JobHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self, job_id: str) -> None:
        self.reply(await self.run(self.manager.get, job_id))

    @web.authenticated
    @authorized
    @_domain_errors
    async def delete(self, job_id: str) -> None:
        await self.run(self.manager.delete, job_id)
        self.set_status(204)
        self.finish()


class CancelHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def post(self, job_id: str) -> None:
        self.reply(await self.run(self.manager.cancel, job_id))


class LogsHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self, job_id: str) -> None:
        await self.run(self.manager.get, job_id)
        folder = self.job_folder(job_id)
        rank = self.int_argument("rank", 0, 0, 99_999)
        tail = self.int_argument("tail", None, 0, 100_000)
        offset = self.int_argument("offset", None, 0, 2**62)
        self.reply(await self.run(read_log, folder, rank, tail=tail, offset=offset))


class EventsHandler(BaseHandler):
    def _client_gone(self) -> bool:
        stream = getattr(self.request.connection, "stream", None)
        return bool(stream is not None and stream.closed())

    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self, job_id: str) -> None:
        await self.run(self.manager.get, job_id)
        path = events_path(self.job_folder(job_id))
        cursor = self.int_argument("cursor", 0, 0, 2**62)
        raw_wait = self.get_argument("wait", "0")
        try:
            wait = min(max(float(raw_wait), 0.0), MAX_WAIT)
        except ValueError:
            raise JobSpecError(f"wait must be a number of seconds, got {raw_wait!r}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            events, next_cursor = await self.run(read_events, path, cursor)
            if events or loop.time() >= deadline or self._client_gone():
                break
            await asyncio.sleep(0.02)
        self.reply({"events": events, "cursor": next_cursor})


class StreamHandler(ExtensionHandlerMixin, JupyterHandler, websocket.WebSocketHandler):
    """Replays a job's events from a cursor, then streams new ones as they are written."""

    auth_resource = AUTH_RESOURCE
    _callback: PeriodicCallback | None = None

    async def pre_get(self) -> None:
        user = self.current_user
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)
        )
        if not allowed:
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        manager = self.settings["tml_manager"]
        job_id = kwargs.get("job_id") or (args[0] if args else "")
        try:
            manager.get(job_id)
        except JobNotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        try:
            self._cursor = int(self.get_argument("cursor", "0"))
        except ValueError:
            raise web.HTTPError(400, "cursor must be a whole number") from None
        if self._cursor < 0:
            raise web.HTTPError(400, "cursor must be 0 or more")
        try:
            self._path = events_path(checked_job_folder(manager, job_id))
        except JobSpecError as exc:
            raise web.HTTPError(400, str(exc)) from None
        self._job_id = job_id
        result = super().get(*args, **kwargs)
        if result is not None:
            await result

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self._finished = False
        self._idle = 0
        self._push()
        self._callback = PeriodicCallback(self._push, 100)
        self._callback.start()

    def _push(self) -> None:
        if self._finished:
            return
        events, self._cursor = read_events(self._path, self._cursor)
        if not events:
            self._idle += 1
            if self._idle % 10 == 0:
                events = self._ended_without_status()
            if not events:
                return
        self._idle = 0
        try:
            self.write_message(json.dumps({"events": events, "cursor": self._cursor}))
        except websocket.WebSocketClosedError:
            self._stop()
            return
        if any(event.get("type") == "status" for event in events):
            self._finished = True
            self._stop()
            self.close(1000, "job ended")

    def _ended_without_status(self) -> list[dict[str, Any]]:
        """The closing status event of a job that ended without writing one, else nothing."""
        try:
            record = self.settings["tml_manager"].get(self._job_id)
        except JobNotFound:
            self._finished = True
            self._stop()
            self.close(1000, "job deleted")
            return []
        if record["status"] not in ("succeeded", "failed", "cancelled"):
            return []
        ended = record.get("ended_at") or 0.0
        if time.time() - ended < STREAM_END_GRACE:
            return []
        status = {"type": "status", "status": record["status"], "reason": record["reason"]}
        return [{**status, "t": ended or time.time()}]

    def _stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def on_close(self) -> None:
        self._stop()

    def on_message(self, message: str | bytes) -> None:
        """The stream is one-way; messages from the client are ignored."""


class ResourcesHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self) -> None:
        snapshot = self.settings.setdefault("tml_resources", {"at": None, "body": None})
        now = time.monotonic()
        if snapshot["at"] is None or now - snapshot["at"] >= RESOURCES_TTL:
            kernel_list = self.kernels()
            kernels = {k["kernel_id"]: k["pid"] for k in kernel_list}
            resources = await self.run(self.manager.resources, kernels)
            resources["kernel_list"] = kernel_list
            snapshot.update(at=time.monotonic(), body=resources)
        self.reply(snapshot["body"])


class ConfigHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self) -> None:
        self.reply(
            {
                "state_dir": str(self.manager.state_dir),
                "tracking_uri": self.manager.tracking_uri,
                "mode": "server",
            }
        )


class RegistryHandler(BaseHandler):
    """Common ground of the model registry routes."""

    def _tracker(self) -> Any:
        from ..tracking import Tracker

        return Tracker(self.manager.tracking_uri)


class ModelsHandler(RegistryHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self) -> None:
        self.reply({"models": await self.run(self._tracker().list_models)})


class ModelHandler(RegistryHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self, name: str) -> None:
        tracker = self._tracker()
        versions = await self.run(tracker.list_versions, name)
        self.reply({"name": name, "versions": versions})


class AliasHandler(RegistryHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def put(self, name: str, alias: str) -> None:
        body = self.body()
        if not isinstance(body, dict) or "version" not in body:
            raise RegistryError('the body must be {"version": "<number>"}')
        await self.run(self._tracker().set_alias, name, alias, body["version"])
        self.reply({"name": name, "alias": alias, "version": str(body["version"])})

    @web.authenticated
    @authorized
    @_domain_errors
    async def delete(self, name: str, alias: str) -> None:
        await self.run(self._tracker().delete_alias, name, alias)
        self.set_status(204)
        self.finish()


class TagHandler(RegistryHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def put(self, name: str, version: str, key: str) -> None:
        body = self.body()
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise RegistryError('the body must be {"value": "<text>"}')
        await self.run(self._tracker().set_version_tag, name, version, key, body["value"])
        self.reply({"name": name, "version": version, "key": key, "value": body["value"]})

    @web.authenticated
    @authorized
    @_domain_errors
    async def delete(self, name: str, version: str, key: str) -> None:
        await self.run(self._tracker().delete_version_tag, name, version, key)
        self.set_status(204)
        self.finish()


class OrphanHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def delete(self, pid: str) -> None:
        from ..devices.attribution import current_gpu_processes, end_process, find_orphans

        kernels = {k["pid"] for k in self.kernels() if k["pid"]}
        owned = await self.run(self.manager._owned_pids) | kernels
        orphans = find_orphans(await self.run(current_gpu_processes), owned)
        outcome = await self.run(end_process, int(pid), allowed={int(o["pid"]) for o in orphans})
        self.reply({"pid": int(pid), "outcome": outcome})


class OpenAPIHandler(BaseHandler):
    @web.authenticated
    @authorized
    @_domain_errors
    async def get(self) -> None:
        self.reply(json.loads(OPENAPI_FILE.read_text()))


def handlers() -> list[tuple[str, type]]:
    """The extension's routes, relative to the server's base URL."""
    return [
        (rf"{PREFIX}/jobs", JobsHandler),
        (rf"{PREFIX}/jobs/{_JOB_ID}", JobHandler),
        (rf"{PREFIX}/jobs/{_JOB_ID}/cancel", CancelHandler),
        (rf"{PREFIX}/jobs/{_JOB_ID}/logs", LogsHandler),
        (rf"{PREFIX}/jobs/{_JOB_ID}/events", EventsHandler),
        (rf"{PREFIX}/jobs/{_JOB_ID}/stream", StreamHandler),
        (rf"{PREFIX}/resources", ResourcesHandler),
        (rf"{PREFIX}/resources/processes/(?P<pid>[0-9]+)", OrphanHandler),
        (rf"{PREFIX}/config", ConfigHandler),
        (rf"{PREFIX}/models", ModelsHandler),
        (rf"{PREFIX}/models/{_NAME}", ModelHandler),
        (rf"{PREFIX}/models/{_NAME}/aliases/(?P<alias>[^/]+)", AliasHandler),
        (rf"{PREFIX}/models/{_NAME}/versions/(?P<version>[^/]+)/tags/(?P<key>[^/]+)", TagHandler),
        (rf"{PREFIX}/openapi.json", OpenAPIHandler),
    ]
