"""Screening processes: stage 1's directory-free half (`routing.Screen`) beside the worker.

The worker's event loop and Faust's consumer thread share one GIL, and screening (decode,
validate, classify, gate) is most of the per-record work. Screening processes do it on the
other cores: the worker sends each input message to one of them and gets back its
`Screened` (a few bytes per record), which it routes itself (`Router.route_screened`).

Wire, over a socket pair per process, in order:
- worker -> process: `REQUEST` (value length, -1 for no value; the wall clock in epoch ms),
  then the value;
- process -> worker: `RESPONSE` (status, payload length), then the payload: `HELLO` with the
  sha256 of the rules the process loaded (and, after a space, of its input format when it
  maps one: `hello_text`), `SCREENED` with `Screened.to_wire()`, `FAILED` with
  the error text of a message that screening raised on.

A process that dies is started again and given every message it had not answered, in order.
One that dies `RETRIES` times in a row on the same message gives that message up
(`ScreeningFailed`: the worker dead-letters it). When a process cannot be started again
(`RETRIES` attempts), it is closed (`ScreeningUnavailable`): its messages go to the others,
and with none left the worker screens in its own process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

from streams.app.routing import Screen, Screened
from streams.core.rules import RulesError, load_rules
from topics.formats import FormatError, describe_problem, load_format

log = logging.getLogger(__name__)

REQUEST: Final = struct.Struct("!iq")
RESPONSE: Final = struct.Struct("!BI")
HELLO: Final = 0
SCREENED: Final = 1
FAILED: Final = 2

#: how a screening process is started (its socket's descriptor, the rules file and the input
#: format follow)
COMMAND: Final = (sys.executable, "-m", "streams.app.screening")
RETRIES: Final = 3
RESTART_DELAY_S: Final = 0.5
SOCKET_BUFFER_BYTES: Final = 4 << 20
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 5.0


class ScreeningFailed(Exception):
    """Screening one message failed (it raised, or its process died on it `RETRIES` times)."""


class ScreeningUnavailable(Exception):
    """The pool is closed: no screening process could be started, or it was stopped."""


def request_frame(value: bytes | None, now_ms: int) -> tuple[bytes, ...]:
    """One message for a screening process: its head and its value (not copied together)."""
    if value is None:
        return (REQUEST.pack(-1, now_ms),)
    return (REQUEST.pack(len(value), now_ms), value)


def hello_text(rules_sha256: str, format_sha256: str = "") -> str:
    """What a screening process says it loaded: the rules' sha256, and its format's."""
    return f"{rules_sha256} {format_sha256}" if format_sha256 else rules_sha256


def serve(sock: socket.socket, screen: Screen, hello_says: str) -> None:
    """A screening process's loop: answer each message in order until the worker hangs up."""
    reader = sock.makefile("rb", buffering=1 << 20)
    hello = hello_says.encode()
    sock.sendall(RESPONSE.pack(HELLO, len(hello)) + hello)
    while True:
        head = reader.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return  # the worker is gone
        length, now_ms = REQUEST.unpack(head)
        value = reader.read(length) if length >= 0 else None
        if value is not None and len(value) < length:
            return
        try:
            status, payload = SCREENED, screen.screen(value, now_ms).to_wire()
        except Exception as exc:  # a bug: the worker dead-letters this message, we go on
            status, payload = FAILED, f"{type(exc).__name__}: {exc}".encode()
        sock.sendall(RESPONSE.pack(status, len(payload)) + payload)


def main(argv: list[str], screen_type: type[Screen] = Screen) -> int:
    """`python -m streams.app.screening FD [RULES [FORMAT [MODE]]]`: serve the worker on
    socket FD (MODE `replay`: no future-timestamp check)."""
    # a Ctrl-C at the terminal is the worker's to handle: this process ends when it hangs up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    try:
        rules = load_rules(argv[1] if len(argv) > 1 and argv[1] else None)
    except RulesError as exc:
        print(f"frwatch screening: error: {exc}", file=sys.stderr)
        return 2
    try:
        # the worker's own mapping code and file (SPEC 2.4): live equals replay
        input_format = load_format(argv[2] if len(argv) > 2 and argv[2] else None)
    except FormatError as exc:
        print(f"frwatch screening: error: {describe_problem(exc)}", file=sys.stderr)
        return 2
    says = hello_text(rules.sha256, "" if input_format is None else input_format.sha256)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        check_future = not (len(argv) > 3 and argv[3] == "replay")
        serve(sock, screen_type(rules, input_format, check_future), says)
    return 0


class _Pending:
    __slots__ = ("deaths", "frame", "future")

    def __init__(self, frame: tuple[bytes, ...], future: asyncio.Future[Screened]) -> None:
        self.frame = frame
        self.future = future
        self.deaths = 0  # how often a process died while this was the oldest unanswered


class ScreeningProcess:
    """One screening process and the messages it has not answered yet, oldest first."""

    def __init__(
        self,
        rules_path: str | None,
        rules_sha256: str,
        name: str,
        command: Sequence[str] = COMMAND,
        input_format: str | None = None,
        format_sha256: str = "",
        mode: str = "live",
    ) -> None:
        """`input_format`: the format file or built-in name, `format_sha256` its sha256;
        `mode`: FRWATCH_MODE (replay: no future-timestamp check)."""
        self.command = tuple(command)
        self.mode = mode
        self.rules_path = rules_path
        self.rules_sha256 = rules_sha256
        self.input_format = input_format
        self.hello = hello_text(rules_sha256, format_sha256)
        self.name = name
        self.pending: collections.deque[_Pending] = collections.deque()
        self.starts = 0
        self.resent = 0  # messages sent again to a process started again
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed: BaseException | None = None

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the process and wait for its hello; raises ScreeningUnavailable if it fails."""
        self._reader, self._writer = await self._spawn_retrying()
        self._task = asyncio.ensure_future(self._answer())

    def submit(self, frame: tuple[bytes, ...]) -> asyncio.Future[Screened]:
        """Send one message; the future resolves with its `Screened`, in submission order.

        While the process is being started again the message waits and is sent with the
        unanswered ones.
        """
        if self._closed is not None:
            raise ScreeningUnavailable(f"{self.name} is closed") from self._closed
        future: asyncio.Future[Screened] = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(frame, future))
        if self._writer is not None:
            self._writer.writelines(frame)
        return future

    async def stop(self) -> None:
        """Stop the process; unanswered messages fail with ScreeningUnavailable."""
        self._close(ScreeningUnavailable(f"{self.name} was stopped"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_process()

    async def _spawn_retrying(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`_spawn`, tried `RETRIES` times."""
        for attempt in range(1, RETRIES):
            try:
                return await self._spawn()
            except ScreeningUnavailable as exc:
                log.warning("%s; trying again in %.1fs", exc, attempt * RESTART_DELAY_S)
                await asyncio.sleep(attempt * RESTART_DELAY_S)
        return await self._spawn()

    async def _spawn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new process, once it said hello with the worker's rules."""
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            # a deep socket buffer lets the process go on while the worker is busy elsewhere
            # (the kernel caps it at net.core.wmem_max)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        try:
            self._proc = subprocess.Popen(
                [
                    *self.command,
                    str(theirs.fileno()),
                    self.rules_path or "",
                    *(
                        [self.input_format or ""]
                        if self.input_format or self.mode != "live"
                        else []
                    ),
                    *([self.mode] if self.mode != "live" else []),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise ScreeningUnavailable(f"{self.name}: cannot start: {exc}") from exc
        finally:
            theirs.close()
        self.starts += 1
        reader, writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        try:
            status, payload = await asyncio.wait_for(_response(reader), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            await self._end_process()
            raise ScreeningUnavailable(f"{self.name}: no hello ({exc!r})") from exc
        if status != HELLO or payload != self.hello.encode():
            writer.close()
            await self._end_process()
            raise ScreeningUnavailable(
                f"{self.name}: loaded other rules or another input format than the worker ({payload[:80]!r})"
            )
        log.info("%s started (pid %s)", self.name, self.pid)
        return reader, writer

    async def _answer(self) -> None:
        """Resolve the pending futures in order; start the process again when it dies."""
        while True:
            assert self._reader is not None
            try:
                status, payload = await _response(self._reader)
                done = self.pending.popleft()
            except (asyncio.IncompleteReadError, ConnectionError, IndexError) as exc:
                try:
                    await self._restart(exc)
                except ScreeningUnavailable as why:
                    # `why` names the process already
                    log.error(
                        "%s; closed: its messages go to the others or stay in the worker", why
                    )
                    self._close(why)
                    return
                continue
            if done.future.done():
                continue
            if status == SCREENED:
                try:
                    done.future.set_result(Screened.from_wire(payload))
                except Exception as exc:
                    done.future.set_exception(ScreeningFailed(f"{type(exc).__name__}: {exc}"))
            else:
                done.future.set_exception(ScreeningFailed(payload.decode(errors="replace")))

    async def _restart(self, why: BaseException) -> None:
        """Start the process again and resend what it had not answered."""
        code = await self._end_process()
        log.warning(
            "%s died (%r, exit code %s) with %d message(s) unanswered; starting it again",
            self.name,
            why,
            code,
            len(self.pending),
        )
        if self.pending:
            oldest = self.pending[0]
            oldest.deaths += 1
            if oldest.deaths >= RETRIES:
                self.pending.popleft()
                oldest.future.set_exception(
                    ScreeningFailed(f"the screening process died {RETRIES} times on this message")
                )
        self._reader, writer = await self._spawn_retrying()
        # no await from here on: what is submitted meanwhile is written after these
        for p in self.pending:
            writer.writelines(p.frame)
        self.resent += len(self.pending)
        self._writer = writer
        log.warning("%s is back; %d message(s) sent to it again", self.name, len(self.pending))

    async def _end_process(self) -> int | None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
        for _ in range(int(STOP_TIMEOUT_S / 0.05)):
            if proc.poll() is not None:
                return proc.returncode
            await asyncio.sleep(0.05)
        proc.kill()
        return proc.wait()

    def _close(self, why: BaseException) -> None:
        self._closed = why
        while self.pending:
            future = self.pending.popleft().future
            if not future.done():
                future.set_exception(ScreeningUnavailable(str(why)))


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, length = RESPONSE.unpack(await reader.readexactly(RESPONSE.size))
    return status, await reader.readexactly(length)


class ScreeningPool:
    """`processes` screening processes, given messages in turn."""

    def __init__(
        self,
        processes: int,
        rules_path: str | None,
        rules_sha256: str,
        command: Sequence[str] = COMMAND,
        input_format: str | None = None,
        format_sha256: str = "",
        mode: str = "live",
    ) -> None:
        self.members = [
            ScreeningProcess(
                rules_path,
                rules_sha256,
                f"screening process {i + 1}/{processes}",
                command,
                input_format,
                format_sha256,
                mode,
            )
            for i in range(processes)
        ]
        self._turn = 0

    async def start(self) -> None:
        """Start every process; raises ScreeningUnavailable if one cannot start."""
        try:
            for member in self.members:
                await member.start()
        except ScreeningUnavailable:
            await self.stop()
            raise

    def submit(self, value: bytes | None, now_ms: int) -> asyncio.Future[Screened]:
        """Screen one message in the next process (ScreeningUnavailable when none is left)."""
        frame = request_frame(value, now_ms)
        members = self.members
        for _ in range(len(members)):
            member = members[self._turn]
            self._turn = (self._turn + 1) % len(members)
            try:
                return member.submit(frame)
            except ScreeningUnavailable:
                continue
        raise ScreeningUnavailable("no screening process is running")

    async def stop(self) -> None:
        """Stop every process."""
        for member in self.members:
            await member.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
