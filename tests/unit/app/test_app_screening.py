"""`streams.app.screening`: real screening processes, their restarts, and what they answer.

No Faust, no Kafka: each test starts real processes (`python -m streams.app.screening`, or
`screening_child.py`, which dies or raises on marked messages) over socket pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.app.routing import Screen, Screened
from streams.app.screening import (
    COMMAND,
    HELLO,
    RESPONSE,
    RETRIES,
    ScreeningFailed,
    ScreeningPool,
    ScreeningProcess,
    ScreeningUnavailable,
    request_frame,
)
from streams.core.rules import load_rules
from streams.synthetic import DEFAULT_START_MS, demo_traffic
from topics.formats import load_format

RULES = load_rules()
NOW = DEFAULT_START_MS + 3_600_000
CHILD = (sys.executable, str(Path(__file__).with_name("screening_child.py")))
TIMEOUT_S = 60


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S))


def messages(n: int, per_message: int = 40) -> list[bytes]:
    """`n` batch messages of realistic traffic, each different."""
    records = list(demo_traffic(n * per_message // 20 + 1, DEFAULT_START_MS, 20))
    return [
        orjson.dumps({"records": records[i * per_message : (i + 1) * per_message]})
        for i in range(n)
    ]


@contextlib.asynccontextmanager
async def running_pool(
    processes: int = 1, command: tuple[str, ...] = COMMAND
) -> AsyncIterator[ScreeningPool]:
    pool = ScreeningPool(processes, None, RULES.sha256, command=command)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


@contextlib.asynccontextmanager
async def running_member() -> AsyncIterator[ScreeningProcess]:
    member = ScreeningProcess(None, RULES.sha256, "screening")
    await member.start()
    try:
        yield member
    finally:
        await member.stop()


def screened_here(value: bytes | None) -> Screened:
    return Screen(RULES).screen(value, NOW)


def test_answers_equal_screening_here_in_order_across_processes() -> None:
    values: list[bytes | None] = [*messages(30), None, b"not json", b'{"records": 3}']

    async def main() -> None:
        async with running_pool(2) as pool:
            futures = [pool.submit(v, NOW) for v in values]
            got = [await f for f in futures]
            assert [m.starts for m in pool.members] == [1, 1]
        assert got == [screened_here(v) for v in values]
        assert got[0].accounts and any(s.gated for s in got)
        assert got[-3].malformed == got[-2].malformed == got[-1].malformed == 1

    run(main)


def test_a_killed_process_is_started_again_and_answers_everything() -> None:
    values = messages(60, per_message=100)

    async def main() -> None:
        async with running_member() as member:
            futures = [_submit(member, v) for v in values]
            assert member.pid is not None
            os.kill(member.pid, signal.SIGKILL)
            got = [await f for f in futures]
            assert member.starts == 2 and member.resent > 0
            # and the new process goes on with the next message
            after = await _submit(member, values[0])
        assert got == [screened_here(v) for v in values]
        assert after == screened_here(values[0])

    run(main)


def _submit(member: ScreeningProcess, value: bytes) -> asyncio.Future[Screened]:
    return member.submit(request_frame(value, NOW))


def test_a_message_that_kills_its_process_fails_alone_after_the_retries() -> None:
    fine = messages(4)
    poison = orjson.dumps({"records": [{"event_id": "die-here"}]})

    async def main() -> None:
        async with running_pool(command=CHILD) as pool:
            futures = [pool.submit(v, NOW) for v in (fine[0], poison, fine[1], fine[2])]
            first = await futures[0]
            with pytest.raises(ScreeningFailed, match=f"died {RETRIES} times"):
                await futures[1]
            rest = [await f for f in futures[2:]]
            (member,) = pool.members
            assert member.starts == 1 + RETRIES
            last = await pool.submit(fine[3], NOW)
        assert [first, *rest, last] == [screened_here(v) for v in (fine[0], *fine[1:4])]

    run(main)


def test_a_message_that_screening_raises_on_fails_and_the_process_goes_on() -> None:
    fine = messages(2)
    bad = orjson.dumps({"records": [{"event_id": "raise-here"}]})

    async def main() -> None:
        async with running_pool(command=CHILD) as pool:
            futures = [pool.submit(v, NOW) for v in (fine[0], bad, fine[1])]
            assert await futures[0] == screened_here(fine[0])
            with pytest.raises(ScreeningFailed, match="ValueError: screening raised"):
                await futures[1]
            assert await futures[2] == screened_here(fine[1])
            assert pool.members[0].starts == 1

    run(main)


def test_a_process_with_other_rules_is_refused() -> None:
    async def main() -> None:
        pool = ScreeningPool(1, None, "0" * 64)
        with pytest.raises(ScreeningUnavailable, match="other rules"):
            await pool.start()
        with pytest.raises(ScreeningUnavailable):
            pool.submit(b"{}", NOW)

    run(main)


def test_a_process_that_cannot_start_closes_the_pool(tmp_path: Path) -> None:
    async def main() -> None:
        pool = ScreeningPool(1, None, RULES.sha256, command=(str(tmp_path / "missing"),))
        with pytest.raises(ScreeningUnavailable, match="cannot start"):
            await pool.start()

    run(main)


def test_when_it_cannot_be_started_again_unanswered_messages_fail_unavailable(
    tmp_path: Path,
) -> None:
    """The worker then screens them itself (streams.app.faust_app)."""
    values = messages(20, per_message=100)

    async def main() -> None:
        async with running_member() as member:
            futures = [_submit(member, v) for v in values]
            member.command = (str(tmp_path / "missing"),)
            assert member.pid is not None
            os.kill(member.pid, signal.SIGKILL)
            results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        answered = [r for r in results if isinstance(r, Screened)]
        unavailable = [r for r in results if isinstance(r, ScreeningUnavailable)]
        assert len(answered) + len(unavailable) == len(values) and unavailable
        # those answered before the kill came first, in order
        assert answered == [screened_here(v) for v in values[: len(answered)]]
        with pytest.raises(ScreeningUnavailable):
            _submit(member, values[0])

    run(main)


def test_stop_fails_what_is_unanswered_and_ends_the_process() -> None:
    values = messages(10, per_message=100)

    async def main() -> None:
        member = ScreeningProcess(None, RULES.sha256, "screening")
        await member.start()
        proc = member._proc
        assert proc is not None
        futures = [_submit(member, v) for v in values]
        await member.stop()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, Screened | ScreeningUnavailable) for r in results)
        assert proc.poll() is not None

    run(main)


def test_a_process_ends_by_itself_when_the_worker_hangs_up() -> None:
    """What a worker's death (SIGKILL included) does to the socket: no orphan is left."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [*COMMAND, str(theirs.fileno())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
    )
    theirs.close()
    try:
        ours.settimeout(TIMEOUT_S)
        head = ours.recv(RESPONSE.size, socket.MSG_WAITALL)
        status, length = RESPONSE.unpack(head)
        assert (status, ours.recv(length, socket.MSG_WAITALL)) == (HELLO, RULES.sha256.encode())
        ours.close()
        assert proc.wait(timeout=TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


AZURE_SAMPLES = Path(__file__).parents[1] / "topics" / "fixtures" / "azure"


def test_processes_map_the_workers_input_format() -> None:
    """FRWATCH_INPUT_FORMAT reaches the processes: same mapping, same letters, same skips."""
    azure = load_format("azure-resource-log")
    assert azure is not None
    values = [
        *(AZURE_SAMPLES / "face-eventhub.jsonl").read_bytes().splitlines(),
        *(AZURE_SAMPLES / "malformed.jsonl").read_bytes().splitlines(),
    ]

    async def main() -> None:
        pool = ScreeningPool(
            1, None, RULES.sha256, input_format=azure.path, format_sha256=azure.sha256
        )
        await pool.start()
        try:
            got = [await pool.submit(v, NOW) for v in values]
        finally:
            await pool.stop()
        assert got == [Screen(RULES, azure).screen(v, NOW) for v in values]
        assert [s.skipped for s in got] == [1, 1, 1, 0]
        assert got[-1].malformed == 3 and got[0].gated

    run(main)


def test_a_process_with_another_input_format_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        pool = ScreeningPool(
            1, None, RULES.sha256, input_format="azure-resource-log", format_sha256="0" * 64
        )
        with pytest.raises(ScreeningUnavailable, match="another input format"):
            await pool.start()

    run(main)


def test_replay_mode_has_no_future_timestamp_check_here_and_in_the_processes() -> None:
    """FRWATCH_MODE=replay (SPEC 6): a record hours ahead of the wall clock is evaluated."""
    ahead = orjson.dumps(
        {
            "event_id": "fut-1",
            "ts": NOW + 3 * 3_600_000,
            "account_id": "acct-a",
            "operation": "face.identify",
        }
    )
    live = Screen(RULES).screen(ahead, NOW)
    assert live.rejected == 1 and live.letters[0][0].reason == "future_timestamp"
    here = Screen(RULES, None, check_future=False).screen(ahead, NOW)
    assert here.rejected == 0 and here.gated

    async def main() -> None:
        pool = ScreeningPool(1, None, RULES.sha256, mode="replay")
        await pool.start()
        try:
            assert await pool.submit(ahead, NOW) == here
        finally:
            await pool.stop()

    run(main)
