"""docs/cluster.md's commands keep the dask dashboards off the network: every scheduler and
worker it starts binds its dashboard to the loopback address (dask's defaults, `:8787` for
the scheduler and `:0` for a worker, listen on every interface even with `--host`)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
LOOPBACK = re.compile(r"^(127\.0\.0\.1|localhost):\d+$")


def _dashboard_problems(text: str) -> list[str]:
    """Why each dask command or cluster of ``text`` leaves a dashboard unbound."""
    problems = ["0.0.0.0 in the doc"] if "0.0.0.0" in text else []
    for line in text.splitlines():
        if re.search(r"\bdask[ -](scheduler|worker)\b", line):
            found = re.search(r"--dashboard-address[ =](\S+)", line)
            if found is None or not LOOPBACK.match(found.group(1)):
                problems.append(line.strip())
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if "Cluster(" in block:
            found = re.search(r"""["']dashboard_address["']\s*:\s*["']([^"']+)["']""", block)
            if found is None or not LOOPBACK.match(found.group(1)):
                problems.append("a python cluster without a loopback dashboard_address")
            if '"--dashboard-address", "127.0.0.1:0"' not in block:
                problems.append("python cluster workers without a loopback dashboard")
    return problems


def test_every_dashboard_in_the_cluster_doc_is_on_loopback() -> None:
    text = DOC.read_text()
    assert len(re.findall(r"\bdask (scheduler|worker)\b", text)) >= 4  # the commands are read
    assert _dashboard_problems(text) == []


def test_the_check_catches_an_open_dashboard() -> None:
    assert _dashboard_problems("    dask scheduler --port 8786\n")
    assert _dashboard_problems("    dask scheduler --dashboard-address :8787\n")
    assert _dashboard_problems("    dask worker tcp://h:8786 --dashboard-address 0.0.0.0:0\n")
    assert not _dashboard_problems("    dask worker tcp://h:8786 --dashboard-address 127.0.0.1:0\n")
    assert _dashboard_problems("```python\ncluster = SLURMCluster(cores=1)\n```\n")
