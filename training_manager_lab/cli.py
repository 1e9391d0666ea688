"""The ``tml`` command: list, follow and cancel jobs, and run a notebook headless."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _jobs(args: argparse.Namespace) -> int:
    from .client import get_client

    records, total = get_client().list(args.status, args.limit, 0)
    print(f"{'id':12}  {'name':20}  {'status':9}  {'progress':>8}  reason")
    for record in records:
        fraction = (record.get("progress") or {}).get("fraction")
        progress = f"{fraction:.0%}" if fraction is not None else "-"
        print(
            f"{record['id']:12}  {record['name'][:20]:20}  {record['status']:9}  "
            f"{progress:>8}  {record.get('reason') or ''}"
        )
    print(f"({len(records)} of {total})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .client import get_client

    print(json.dumps(get_client().get(args.job_id), indent=2, default=str))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from .client import get_client

    record = get_client().cancel(args.job_id)
    print(f"job {record['id']}: {record['status']}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .api import job

    handle = job(args.job_id)
    if not args.follow:
        print(handle.logs(tail=args.tail, rank=args.rank))
        return 0
    offset = 0
    rank = args.rank or 0
    while True:
        chunk = handle._client.logs(handle.id, rank, offset=offset)
        sys.stdout.write(chunk["text"])
        sys.stdout.flush()
        offset = chunk["offset"]
        if not chunk["text"] and handle.status in ("succeeded", "failed", "cancelled"):
            return 0
        time.sleep(0.5)


def _run_notebook(args: argparse.Namespace) -> int:
    """Execute a notebook in a fresh kernel and print what its cells print."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(notebook, timeout=args.timeout, kernel_name="python3")
    try:
        client.execute(cwd=str(_folder(args.notebook)))
    finally:
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                _print_output(output)
    return 0


def _folder(path: str) -> Any:
    from pathlib import Path

    return Path(path).resolve().parent


def _print_output(output: dict[str, Any]) -> None:
    kind = output.get("output_type")
    if kind == "stream":
        sys.stdout.write(output.get("text", ""))
    elif kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            name = str(data.get("text/plain", "widget")).split("(", 1)[0]
            print(f"[live widget: {name}; open the notebook in JupyterLab to see it]")
            return
        text = data.get("text/plain")
        if text:
            print(text)
    elif kind == "error":
        print("\n".join(output.get("traceback", [])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tml", description="training-manager-lab jobs")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("jobs", help="list recent jobs")
    listing.add_argument(
        "--status", choices=("queued", "running", "succeeded", "failed", "cancelled")
    )
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=_jobs)

    show = commands.add_parser("show", help="print a job's record")
    show.add_argument("job_id")
    show.set_defaults(run=_show)

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=_cancel)

    logs = commands.add_parser("logs", help="print a job's output")
    logs.add_argument("job_id")
    logs.add_argument("--rank", type=int)
    logs.add_argument("--tail", type=int, default=100)
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(run=_logs)

    notebook = commands.add_parser("run-notebook", help="execute a notebook headless")
    notebook.add_argument("notebook")
    notebook.add_argument("--timeout", type=int, default=900)
    notebook.set_defaults(run=_run_notebook)

    args = parser.parse_args(argv)
    from .errors import TrainingManagerError

    try:
        return int(args.run(args))
    except TrainingManagerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
