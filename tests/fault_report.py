"""A pytest plugin: the fault suite's table of scenarios, printed after the run.

Each scenario records one row through the session-scoped ``fault_table`` fixture: its name, how
long the load ran, the requests wrk completed, the non-2xx answers, the socket errors and a short
note. Rows are recorded before the scenario asserts, so a failing scenario still shows its numbers.
The terminal summary prints the rows as a Markdown table under the header "fault suite" (also with
``-q``), and writes it to the file named by ``FAULT_SUITE_REPORT`` when that is set.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPORT_ENV = "FAULT_SUITE_REPORT"
HEADER = "fault suite"
COLUMNS = ("scenario", "outcome", "duration s", "requests", "non-2xx", "socket errors", "note")


@dataclass(frozen=True)
class FaultRow:
    """What one scenario measured."""

    nodeid: str
    scenario: str
    duration_s: float
    requests: int
    non_2xx: int
    socket_errors: int
    note: str


@dataclass
class FaultTable:
    """The rows of the session, and the outcome of every test that asked for the table."""

    rows: list[FaultRow] = field(default_factory=list)
    outcomes: dict[str, str] = field(
        default_factory=dict
    )  # nodeid -> passed, failed, skipped or "error in setup"
    running: str = ""  # nodeid of the test being run: the one a new row belongs to
    report_path: str | None = None  # where to write the table too

    def add(
        self,
        scenario: str,
        duration_s: float,
        requests: int,
        non_2xx: int,
        socket_errors: int,
        note: str = "",
    ) -> None:
        """Record one scenario's numbers for the test now running."""
        self.rows.append(FaultRow(self.running, scenario, duration_s, requests, non_2xx, socket_errors, note))

    def markdown(self) -> str:
        """The rows as a Markdown table; a test that recorded nothing gets a row of its own."""
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        recorded = {row.nodeid for row in self.rows}
        for row in self.rows:
            cells = (
                row.scenario,
                self.outcomes.get(row.nodeid, "?"),
                f"{row.duration_s:.1f}",
                str(row.requests),
                str(row.non_2xx),
                str(row.socket_errors),
                row.note,
            )
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
        for nodeid, outcome in self.outcomes.items():
            if nodeid not in recorded:
                name = nodeid.rpartition("::")[2]
                lines.append(f"| {name} | {outcome} | – | – | – | – | no row recorded |")
        return "\n".join(lines)


TABLE = pytest.StashKey[FaultTable]()


def pytest_configure(config: pytest.Config) -> None:
    """Create the session's table.

    The variable is not named BINSERVE_*: binserve reads those as options, and the servers the
    tests start inherit this environment.
    """
    config.stash[TABLE] = FaultTable(report_path=os.environ.get(REPORT_ENV))


@pytest.fixture(scope="session")
def fault_table(pytestconfig: pytest.Config) -> FaultTable:
    """The session's table of fault scenarios: ``fault_table.add(scenario, duration_s, ...)``."""
    return pytestconfig.stash[TABLE]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Point new rows at the test about to run."""
    item.config.stash[TABLE].running = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the outcome of every test that uses the table; a failed setup or teardown counts."""
    report = yield
    if "fault_table" in getattr(item, "fixturenames", ()):
        outcomes = item.config.stash[TABLE].outcomes
        if report.failed:
            outcomes[item.nodeid] = "failed" if report.when == "call" else f"error in {report.when}"
        elif report.when == "call" or report.skipped:
            outcomes.setdefault(item.nodeid, report.outcome)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print the table (and write it to ``$FAULT_SUITE_REPORT``) when a scenario ran."""
    table = config.stash.get(TABLE, None)
    if table is None or not (table.rows or table.outcomes):
        return
    text = table.markdown()
    terminalreporter.write_sep("=", HEADER)
    terminalreporter.write_line(text)
    if table.report_path:
        Path(table.report_path).write_text(f"# {HEADER}\n\n{text}\n")
