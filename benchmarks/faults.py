"""Fault injection report: run every probe of tests/test_faults.py (issue 16) and count them.

    python benchmarks/faults.py        # -> benchmarks/results/faults.md and faults.json

Each probe runs `mess-edge` on a small finished pipeline or a broken copy of one of its files and checks the exit
code, the one-line message, that every input is byte-identical afterwards and that no temporary file is left.
Prints "probes passed / probes run" and the failures, if any. Exits non-zero when a probe fails.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, save  # noqa: E402


class _Count(object):
    """A pytest plugin that records each probe's outcome (its test call, or the fixture that broke it)."""

    def __init__(self):
        self.outcomes = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid.split("::", 1)[1]] = report.outcome


def main():
    counter = _Count()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(ROOT, "tests", "test_faults.py")],
                     plugins=[counter])
    passed = sorted(k for k, v in counter.outcomes.items() if v == "passed")
    failed = sorted(k for k, v in counter.outcomes.items() if v != "passed")
    lines = ["# Fault injection (tests/test_faults.py)", "",
             "**{} probes passed / {} probes run**".format(len(passed), len(counter.outcomes)), "",
             "| probe | result |", "|---|---|"]
    lines += ["| `{}` | {} |".format(k, counter.outcomes[k]) for k in sorted(counter.outcomes)]
    save("faults", {"passed": len(passed), "run": len(counter.outcomes), "failed": failed,
                    "outcomes": counter.outcomes}, "\n".join(lines))
    print("{} probes passed / {} probes run".format(len(passed), len(counter.outcomes)))
    return 0 if not failed and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
