"""Support for the console tests: a real `baton serve` (target/debug/baton) with operator and
client tokens, a participant served by the Python SDK, and headless Chromium driven through
Debian's chromedriver."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg
import pytest

from baton_tx import Failed, Participant, Permanent, Reply, Request, Transient

REPO = Path(__file__).resolve().parents[2]
PG = os.environ.get("BATON_TEST_PG", "postgres://postgres@127.0.0.1:5432")
BATON = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = REPO / "target" / "console-screenshots"
#: Set CONSOLE_DOCS=1 to also refresh the screenshots the README shows (docs/console/).
DOCS = REPO / "docs" / "console"

OPERATOR = "console-operator-" + uuid.uuid4().hex
CLIENT = "console-client-" + uuid.uuid4().hex


def sha(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def until(what: str, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Polls `pred` every 50 ms until it is truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except Exception:  # a page element not there yet, a stale element: look again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    """A `baton serve` child process; `base` is its HTTP(S) port's URL."""

    def __init__(self, database_url: str, extra: List[str], tls: bool = False) -> None:
        if not BATON.exists():
            raise RuntimeError(f"{BATON} is missing: run `cargo build --bin baton` first")
        args = [
            str(BATON), "serve", "--database-url", database_url, "--id", "console",
            "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--max-connections", "3", "--default-initial-backoff-ms", "20",
            "--default-max-backoff-ms", "100", "--default-timeout-ms", "5000",
            "--claim-interval-ms", "200", "--lease-ms", "3000",
            "--auth-token", f"ops:operator+client+participant={sha(OPERATOR)}",
            "--auth-token", f"shop:client:shop={sha(CLIENT)}",
            *extra,
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, text=True, env={**os.environ, "BATON_LOG": "warn"}
        )
        lines = first_lines(self.proc, 2, 60)
        # "baton coordinator listening on …", then "health and metrics on http(s)://ADDR".
        self.base = lines[1].split()[-1]
        self.tls = tls
        self.context = ssl._create_unverified_context() if tls else None

    def call(self, method: str, path: str, token: str = OPERATOR, body: Any = None) -> Any:
        """The JSON API; returns (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def start(self, body: Dict[str, Any], token: str = OPERATOR) -> str:
        status, reply = self.call("POST", "/v1/transactions", token, body)
        assert status in (200, 201), reply
        return reply["tx_id"]

    def get(self, tx_id: str, token: str = OPERATOR) -> Dict[str, Any]:
        status, reply = self.call("GET", f"/v1/transactions/{tx_id}", token)
        assert status == 200, reply
        return reply

    def events(self, tx_id: str) -> List[Dict[str, Any]]:
        status, reply = self.call("GET", f"/v1/transactions/{tx_id}/events?limit=1000")
        assert status == 200, reply
        return reply["events"]

    def settle(self, tx_id: str, states: tuple, token: str = OPERATOR) -> Dict[str, Any]:
        try:
            return until(f"{tx_id} in {states}", lambda: (t := self.get(tx_id, token))["state"] in states and t)
        except AssertionError as e:
            raise AssertionError(f"{e}: {self.get(tx_id, token)} {self.events(tx_id)}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def first_lines(proc: subprocess.Popen, count: int, timeout: float) -> List[str]:
    """The first `count` stdout lines of `proc`; keeps draining it afterwards."""
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
        raise RuntimeError(f"baton serve did not start within {timeout} s (got {lines!r})")
    return lines


class Shop:
    """A participant on its own event loop thread. Actions: `ok`; `flaky` (one transient error per
    transaction, then ok); `refuse` (a business failure, so the saga compensates); `hang` (waits
    until released). Compensating `stuck` fails permanently the first time per transaction, so the
    saga ends `failed` until an operator retries it. Prepare `no` votes no."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.release = threading.Event()
        self.flaked: set = set()
        self.stuck: set = set()
        p = Participant()
        for action in ("ok", "flaky", "refuse", "hang", "stuck"):
            p.on_execute(action)(self.execute)
            p.on_compensate(action)(self.compensate)
        for action in ("yes", "no"):
            p.on_prepare(action)(self.prepare)
            p.on_commit(action)(self.done)
            p.on_abort(action)(self.done)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(p.serve("127.0.0.1:0"))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30), "participant did not start"
        self.endpoint = self.server.endpoint

    async def execute(self, req: Request) -> Reply:
        if req.action == "flaky" and req.tx_id not in self.flaked:
            self.flaked.add(req.tx_id)
            raise Transient("flaky: try again")
        if req.action == "refuse":
            raise Failed("refused: <img src=x onerror=window.pwned=1>")
        if req.action == "hang":
            await self.loop.run_in_executor(None, self.release.wait, 300)
        return Reply.json({"done": req.action})

    async def compensate(self, req: Request) -> None:
        if req.action == "stuck" and req.tx_id not in self.stuck:
            self.stuck.add(req.tx_id)
            raise Permanent("compensation refused")

    async def prepare(self, req: Request) -> Reply:
        if req.action == "no":
            raise Failed("no funds")
        return Reply.json({"prepared": True})

    async def done(self, req: Request) -> None:
        return None

    def stop(self) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self.server.shutdown(2.0), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    name = f"baton_console_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def shop() -> Iterator[Shop]:
    s = Shop()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def server(database: str) -> Iterator[Server]:
    s = Server(database, [])
    yield s
    s.stop()


def chrome(tls: bool = False) -> Any:
    """Headless Chromium through Debian's chromedriver, given explicitly so Selenium Manager
    never downloads anything; a fresh profile; no background network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise RuntimeError(f"{path} is missing: apt-get install chromium chromium-driver")
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"baton-console-{uuid.uuid4().hex}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--disable-extensions", "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if tls:
        options.set_capability("acceptInsecureCerts", True)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver._baton_profile = profile  # type: ignore[attr-defined]
    return driver


def close(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver._baton_profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chrome()
    yield driver
    close(driver)


def severe(driver: Any) -> List[Dict[str, Any]]:
    """The browser console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def use_token(driver: Any, base: str, token: str) -> None:
    """Open the console and keep `token` for the tab, as the login form does."""
    driver.get(base + "/ui/coordinators")
    driver.execute_script("sessionStorage.setItem('baton.console.token', arguments[0])", token)


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    if os.environ.get("CONSOLE_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}.png", DOCS / f"{name}.png")


def saga(shop: Shop, actions: List[str], labels: Optional[Dict[str, str]] = None,
         compensate: Optional[List[str]] = None) -> Dict[str, Any]:
    steps = []
    for i, action in enumerate(actions):
        steps.append({
            "name": f"s{i}-{action}", "endpoint": shop.endpoint,
            "action": action, "compensate": (compensate or actions)[i], "timeout_ms": 60000,
            "retry": {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 50},
        })
    return {"saga": {"steps": steps}, "labels": labels or {}, "timeout_ms": 120000}


def two_phase(shop: Shop, votes: List[str], labels: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    branches = [
        {"name": f"b{i}", "endpoint": shop.endpoint, "action": v}
        for i, v in enumerate(votes)
    ]
    return {"two_phase": {"branches": branches}, "labels": labels or {}}


