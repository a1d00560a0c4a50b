"""Test support: a real `baton serve` (built from this repository) on a database of each test
module's own, on the machine's PostgreSQL; async tests run on a fresh event loop each."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]
PG = os.environ.get("BATON_TEST_PG", "postgres://postgres@127.0.0.1:5432")
BATON = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
RUST_PARTICIPANTS = REPO / "target" / "debug" / "examples" / "rust_participants"

#: Short retry, claim and lease times so tests run in seconds, and a small pool: the PostgreSQL
#: server is shared and may have few connections to spare (as tests/support/process.rs).
FAST = {
    "--max-connections": "4",
    "--default-initial-backoff-ms": "20",
    "--default-max-backoff-ms": "200",
    "--default-timeout-ms": "2000",
    "--claim-interval-ms": "200",
    "--lease-ms": "3000",
}

#: Every async test gets this long before it fails.
TEST_TIMEOUT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> Optional[bool]:
    """Run `async def` tests on their own event loop, bounded in time (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**args), TEST_TIMEOUT))
    return True


@pytest.fixture(scope="module")
def database(request: Any) -> Iterator[str]:
    """A database of this test module's own, dropped afterwards; yields its URL."""
    module = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    name = f"baton_py_{module}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _first_lines(proc: subprocess.Popen, count: int, timeout: float, what: str) -> List[str]:
    """The first `count` stdout lines of `proc`, then keeps draining it so it never blocks."""
    assert proc.stdout is not None
    lines: List[str] = []
    got = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if len(lines) < count:
                lines.append(line.rstrip("\n"))
                if len(lines) == count:
                    got.set()
        got.set()

    threading.Thread(target=drain, daemon=True).start()
    if not got.wait(timeout) or len(lines) < count:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not start within {timeout} s (got {lines!r})")
    return lines


class Coordinator:
    """A `baton serve` child process."""

    def __init__(self, database_url: str, id: str, extra: Dict[str, str], listen: str) -> None:
        if not BATON.exists():
            raise RuntimeError(f"{BATON} is missing: run `cargo build --bin baton` first")
        flags = {"--listen": listen, "--http-listen": "127.0.0.1:0", **FAST, **extra}
        args = [str(BATON), "serve", "--database-url", database_url, "--id", id, "--no-auth"]
        for flag, value in flags.items():
            args += [flag, value]
        env = {**os.environ, "BATON_LOG": "warn"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        # "baton coordinator listening on http://127.0.0.1:PORT", then the health address.
        line = _first_lines(self.proc, 1, 60, "baton serve")[0]
        self.endpoint = line.split()[-1]
        self.address = self.endpoint.removeprefix("http://")

    def kill9(self) -> None:
        """SIGKILL, and reap the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful), escalating to SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture(scope="module")
def coordinators(database: str) -> Iterator[Callable[..., Coordinator]]:
    """Starts coordinators on this module's database; stops each at the end of the module."""
    started: List[Coordinator] = []

    def start(id: str = "py-1", listen: str = "127.0.0.1:0", **extra: str) -> Coordinator:
        c = Coordinator(database, id, extra, listen)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def coordinator(coordinators: Callable[..., Coordinator]) -> Coordinator:
    """One coordinator shared by the module's tests."""
    return coordinators()


class RustParticipants:
    """The examples/rust_participants binary: Rust participants (the ledger one on the Rust
    PgBarrier) the Python tests call."""

    def __init__(self, env: Dict[str, str]) -> None:
        if not RUST_PARTICIPANTS.exists():
            raise RuntimeError(
                f"{RUST_PARTICIPANTS} is missing: run `cargo build --example rust_participants`"
            )
        self.proc = subprocess.Popen(
            [str(RUST_PARTICIPANTS)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn", **env},
        )
        self.endpoints: Dict[str, str] = {}
        expected = ("BATON_ADDR" in env) * 2 + ("BARRIER_DATABASE_URL" in env) + 1
        for line in _first_lines(self.proc, expected, 60, "rust_participants"):
            if line != "ready":
                name, endpoint = line.split()
                self.endpoints[name] = endpoint

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def until(what: str, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Polls `pred` (sync or async) every 20 ms until it is truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_final(client: Any, tx_id: str, timeout: float = 30.0) -> Any:
    """The transaction once it has ended, waiting on the server."""
    tx = await client.wait(tx_id, timeout)
    assert tx.state.is_final, f"{tx_id} still {tx.state} after {timeout} s"
    return tx


Async = Callable[..., Awaitable[Any]]
