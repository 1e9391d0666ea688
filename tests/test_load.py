"""Load through a real Jupyter server: short jobs one after another, then many at once.

The server's open file descriptors, threads and memory must not grow beyond a small bound,
and the job store must stay consistent: every job terminal, every transition allowed.
``TML_LOAD_SEQUENCE`` and ``TML_LOAD_PARALLEL`` set the counts (``scripts/soak.sh``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest_faults import *  # noqa: F403
from tests.conftest_faults import (
    SHORT,
    JupyterServer,
    import_spec,
    record_figures,
    server_usage,
    store_problems,
    trials,
)
from training_manager_lab.store import TERMINAL

pytestmark = pytest.mark.timeout(
    300 + 120 * (trials(4, "TML_LOAD_SEQUENCE") + trials(4, "TML_LOAD_PARALLEL"))
)

#: Growth allowed over the whole run, after a warm-up job and a burst of requests.
MAX_FD_GROWTH = 10
MAX_THREAD_GROWTH = 4
MAX_RSS_GROWTH_MIB = 60.0


def run_to_end(server: JupyterServer, name: str) -> dict[str, Any]:
    """Launch a short job, follow it as the sidebar would, and return its final record."""
    record = server.launch(import_spec(name, SHORT, experiment="load"))
    final = server.wait_terminal(record["id"], 300)
    read_like_the_sidebar(server, record["id"])
    return final


def read_like_the_sidebar(server: JupyterServer, job_id: str) -> None:
    cursor, pages = 0, 0
    while True:
        page = server.get(f"jobs/{job_id}/events", params={"cursor": cursor}).json()
        if not page["events"]:
            break
        cursor, pages = page["cursor"], pages + 1
    assert pages >= 1
    assert server.get(f"jobs/{job_id}/logs", params={"rank": 0, "tail": 50}).status_code == 200
    assert server.get("jobs", params={"limit": 20}).status_code == 200
    assert server.get("resources").status_code == 200


def warm_up(server: JupyterServer) -> None:
    """Fill the server's worker thread pool (each thread holds its store connection)."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.get("jobs").status_code, range(64)))
    assert set(answers) == {200}


def test_many_short_jobs_leave_the_server_as_it_was(tml_server: JupyterServer) -> None:
    in_sequence = trials(4, "TML_LOAD_SEQUENCE")
    at_once = trials(4, "TML_LOAD_PARALLEL")
    pid = tml_server.pid
    finished = [run_to_end(tml_server, "load-warm-up")]
    warm_up(tml_server)
    before = server_usage(pid)
    samples = [before]

    for index in range(in_sequence - 1):
        finished.append(run_to_end(tml_server, f"load-sequence-{index}"))
        samples.append(server_usage(pid))
    with ThreadPoolExecutor(at_once) as pool:
        finished += pool.map(lambda i: run_to_end(tml_server, f"load-parallel-{i}"), range(at_once))
    warm_up(tml_server)
    after = server_usage(pid)

    growth = {key: after[key] - before[key] for key in before}
    # The resident memory after each tenth of the jobs in sequence: a plateau or a slope.
    tenth = max(len(samples) // 10, 1)
    record_figures(
        "load", in_sequence=in_sequence, at_once=at_once, before=before, after=after,
        growth=growth, peak_rss_mib=max(s["rss_mib"] for s in samples + [after]),
        rss_mib_by_tenth=[round(s["rss_mib"], 1) for s in samples[tenth - 1 :: tenth]],
    )  # fmt: skip
    assert tml_server.pid == pid, "the server restarted during the run"
    assert [job["status"] for job in finished] == ["succeeded"] * len(finished), [
        (job["id"], job["reason"]) for job in finished if job["status"] != "succeeded"
    ]
    assert growth["fds"] <= MAX_FD_GROWTH, (before, after)
    assert growth["threads"] <= MAX_THREAD_GROWTH, (before, after)
    assert growth["rss_mib"] <= MAX_RSS_GROWTH_MIB, (before, after)
    assert store_problems(tml_server.state_dir) == []
    for job in finished:
        assert tml_server.record(job["id"])["status"] in TERMINAL
