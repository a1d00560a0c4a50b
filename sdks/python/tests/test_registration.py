"""Participant registration: heartbeats, expiry, re-registration, and graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

from baton_tx import Client, Participant, Registration, Request, Saga, Step, TxState

from conftest import _first_lines, until


async def listed(client: Client, service: str, endpoint: str) -> bool:
    return any(p.endpoint == endpoint for p in await client.list_participants(service))


async def test_registered_service_is_routed_renewed_and_deregistered(coordinator: Any) -> None:
    p = Participant()

    @p.on_execute("ping")
    async def ping(req: Request) -> bytes:
        return b"pong"

    server = await p.serve()
    async with Client(coordinator.endpoint) as client:
        await server.register(Registration(coordinator.endpoint, "py-ping", ttl=0.6))
        [entry] = await client.list_participants("py-ping")
        assert entry.endpoint == server.endpoint and entry.expires_at_ms > 0
        # Heartbeats push the expiry forward, past the first TTL.
        await until(
            "a heartbeat to renew the registration",
            lambda: _renewed(client, entry.expires_at_ms + 600),
        )
        tx = await client.run(Saga().step(Step("ping", "py-ping")))
        assert tx.state is TxState.COMMITTED and tx.branches[0].output == b"pong"
        # Removed behind its back (as an expiry would), it registers again on the next beat.
        assert await client.deregister_participant("py-ping", server.endpoint)
        await until("re-registration", lambda: listed(client, "py-ping", server.endpoint))
        await server.shutdown()
        assert not await listed(client, "py-ping", server.endpoint)


async def _renewed(client: Client, after_ms: int) -> bool:
    entries = await client.list_participants("py-ping")
    return bool(entries) and entries[0].expires_at_ms >= after_ms


async def test_a_registration_without_heartbeats_expires(coordinator: Any) -> None:
    async with Client(coordinator.endpoint) as client:
        entry = await client.register_participant("py-gone", "http://127.0.0.1:9", ttl=0.3)
        assert entry.expires_at_ms > 0
        assert await listed(client, "py-gone", "http://127.0.0.1:9")
        await until("the registration to expire", lambda: _absent(client))


async def _absent(client: Client) -> bool:
    return not await listed(client, "py-gone", "http://127.0.0.1:9")


PARTICIPANT = textwrap.dedent(
    """
    import asyncio, sys
    from baton_tx import Participant, Registration

    async def main() -> None:
        p = Participant()

        @p.on_execute("noop")
        async def noop(req):
            return None

        server = await p.serve()
        await server.register(Registration(sys.argv[1], "py-sigterm", ttl=5))
        print(server.endpoint, flush=True)
        await server.serve_until_signal()
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


async def test_sigterm_deregisters_and_exits_cleanly(coordinator: Any, tmp_path: Any) -> None:
    script = tmp_path / "participant.py"
    script.write_text(PARTICIPANT)
    proc = subprocess.Popen(
        [sys.executable, str(script), coordinator.endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = (await asyncio.to_thread(_first_lines, proc, 1, 30, "participant"))[0]
        async with Client(coordinator.endpoint) as client:
            assert await listed(client, "py-sigterm", endpoint)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
            assert proc.stderr is not None
            assert code == 0, proc.stderr.read()
            assert not await listed(client, "py-sigterm", endpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
