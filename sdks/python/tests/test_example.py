"""examples/python/order_saga.py runs as the README says, end to end."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_order_saga_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python" / "order_saga.py")],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert ": committed" in out and ": compensated" in out
    assert "payments (python): refund payment-o-" in out
    assert "inventory (rust): release 1 x FRAGILE" in out
