"""The order saga with a Python payments participant beside Rust inventory and shipping ones.

    cargo build --bin baton --example rust_participants
    python3 -m venv target/py-venv && target/py-venv/bin/pip install ./sdks/python
    target/py-venv/bin/python examples/python/order_saga.py

It starts `baton serve` on an SQLite file in a temporary directory (set BATON_ADDR to use a
running coordinator instead), the Rust participants (examples/rust_participants.rs) registered as
`inventory` and `shipping`, and serves `payments` here in Python. Then it places two orders: one
that ships, and one whose shipping fails, so the Python payment is refunded and the Rust
reservation released, newest first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from baton_tx import Client, Participant, Registration, Reply, Request, Saga, Step

REPO = Path(__file__).resolve().parents[2]
BATON = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
RUST_PARTICIPANTS = REPO / "target" / "debug" / "examples" / "rust_participants"

payments = Participant()


@payments.on_execute("charge")
async def charge(req: Request) -> Reply:
    order = req.json()
    print(f"  payments (python): charge {order['amount_cents']} cents for {order['order']}")
    return Reply(f"payment-{order['order']}".encode())


@payments.on_compensate("charge")
async def refund(req: Request) -> None:
    payment = (req.output_of("charge") or b"").decode()
    print(f"  payments (python): refund {payment or 'nothing (never charged)'}")


def start(args: List[str], env: Optional[dict] = None) -> "subprocess.Popen[str]":
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def read_until(proc: "subprocess.Popen[str]", prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"{proc.args[0]} exited before printing {prefix!r}")


def stop(proc: "subprocess.Popen[str]") -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def main() -> None:
    for binary in (BATON, RUST_PARTICIPANTS):
        if not binary.exists():
            sys.exit(f"{binary} is missing: run `cargo build --bin baton --example rust_participants`")
    children = []
    with tempfile.TemporaryDirectory(prefix="baton-python-example-") as tmp:
        try:
            addr = os.environ.get("BATON_ADDR")
            if addr is None:
                coordinator = start(
                    [str(BATON), "serve", "--database-url", f"sqlite://{tmp}/baton.db",
                     "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--no-auth"],
                    {"BATON_LOG": "warn"},
                )
                children.append(coordinator)
                addr = read_until(coordinator, "baton coordinator listening on").split()[-1]
                print(f"coordinator at {addr}")
            rust = start([str(RUST_PARTICIPANTS)], {"BATON_ADDR": addr})
            children.append(rust)
            read_until(rust, "ready")
            # Print what the Rust participants print, as it happens.
            asyncio.get_running_loop().run_in_executor(None, lambda: [print(l, end="") for l in rust.stdout or []])

            server = await payments.serve("127.0.0.1:0")
            await server.register(Registration(addr, "payments", ttl=10))
            async with Client(addr) as client:
                for n, sku in ((1, "BOOK"), (2, "FRAGILE")):
                    order = {"order": f"o-{os.getpid()}-{n}", "sku": sku, "qty": 1, "amount_cents": 1299}
                    saga = (
                        Saga()
                        .step(Step("reserve", "inventory").compensate("reserve").json(order))
                        .step(Step("charge", "payments").compensate("charge").json(order))
                        .step(Step("ship", "shipping").json(order))
                        .idempotency_key(f"order-{os.getpid()}-{n}")
                        .label("example", "python_order_saga")
                        .timeout(60)
                    )
                    print(f"\n== order {n} ({sku})")
                    tx = await client.run(saga)
                    await asyncio.sleep(0.1)  # let the Rust participants' output through first
                    print(f"{tx.tx_id}: {tx.state.name.lower()}")
                    for b in tx.branches:
                        print(f"  {b.index} {b.name:<8} {b.state:<12} {b.last_error}")
                    for e in await client.events(tx.tx_id):
                        where = f" [{tx.branches[e.branch].name}]" if e.branch >= 0 else ""
                        print(f"    {e.seq:>3} {e.kind}{where} {e.detail}")
            await server.shutdown()
        finally:
            for child in reversed(children):
                stop(child)


if __name__ == "__main__":
    asyncio.run(main())
