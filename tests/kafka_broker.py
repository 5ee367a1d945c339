"""Start and stop a real, local Apache Kafka broker for tests.

Thin wrapper around ``deploy/kafka/broker`` (the same script developers use), so
tests and local runs share one recipe. Each broker gets free ports on 127.0.0.1
and its own run directory (server.properties, data/, broker.log, broker.pid).

    run_dir = Path(tempfile.mkdtemp())
    bootstrap = start_broker(run_dir)   # "127.0.0.1:PORT"
    ...
    stop_broker(run_dir)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "broker"
HOST = "127.0.0.1"
CONTROLLER_PORT_OFFSET = 10000

# A cold start fetches ~46 jars with Maven once; allow for a slow mirror.
SCRIPT_TIMEOUT_S = 600.0

_started: set[Path] = set()


class BrokerError(RuntimeError):
    """The broker script failed; the message carries its stderr (incl. log tail)."""


def _port_free(port: int) -> bool:
    # Same check as the broker script: bind with SO_REUSEADDR, like Kafka's acceptor.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_ports(attempts: int = 100, secure: bool = False) -> tuple[int, int]:
    """Return free ports (broker_port, controller_port), controller_port = broker_port + 10000
    (and broker_port + 1 free too for a secured broker's mTLS listener)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        controller = port + CONTROLLER_PORT_OFFSET
        if secure and not _port_free(port + 1):
            continue
        if controller <= 65535 and _port_free(port) and _port_free(controller):
            return port, controller
    raise BrokerError(f"could not find a free port pair (P, P+{CONTROLLER_PORT_OFFSET}) on {HOST}")


def _run(command: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(BROKER_SCRIPT), command, *flags],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BrokerError(f"broker script not found or not executable: {BROKER_SCRIPT}") from exc
    except subprocess.TimeoutExpired as exc:
        limit = f"{SCRIPT_TIMEOUT_S:.0f}s"
        raise BrokerError(f"'{BROKER_SCRIPT} {command}' did not finish within {limit}") from exc


def fetch_jars() -> None:
    """Fetch the broker jars into the cache (no-op when already there)."""
    proc = _run("fetch", {})
    if proc.returncode != 0:
        raise BrokerError(
            f"fetching the Kafka jars failed (exit {proc.returncode}):\n" + proc.stderr
        )


def start_broker(run_dir: Path | str, attempts: int = 3, secure: bool = False) -> str:
    """Start a broker on free ports with ``run_dir`` as its run directory.

    Returns the bootstrap address "127.0.0.1:PORT" once the broker accepts clients.
    Retries with new ports if another process grabbed a port in the meantime;
    any other failure raises BrokerError with the script's stderr. With `secure`, the
    broker of `up --secure`: SASL_SSL on PORT, mTLS on PORT+1, the client properties
    files in ``run_dir``.
    """
    run_dir = Path(run_dir).resolve()
    last_error = ""
    for _ in range(attempts):
        port, controller = find_free_ports(secure=secure)
        env = {
            "KAFKA_SECURE": "1" if secure else "0",
            "KAFKA_SSL_PORT": str(port + 1),
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_RUN_DIR": str(run_dir),
        }
        _started.add(run_dir)
        proc = _run("up", env)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            return lines[-1].strip()
        last_error = f"exit {proc.returncode}\n{proc.stderr}"
        # Make sure nothing half-started survives before we retry or give up.
        stop_broker(run_dir)
        if "already in use" not in proc.stderr:  # also matches java's "Address already in use"
            break
    raise BrokerError(
        f"starting the Kafka broker failed ({BROKER_SCRIPT} up, run dir {run_dir}): {last_error}"
    )


def stop_broker(run_dir: Path | str) -> None:
    """Stop the broker of ``run_dir`` (SIGTERM, SIGKILL after 30 s). Idempotent."""
    run_dir = Path(run_dir).resolve()
    # The script finds the process by its run dir; KAFKA_PORT only matters for messages.
    env = {"KAFKA_RUN_DIR": str(run_dir), "KAFKA_PORT": _port_of(run_dir)}
    proc = _run("down", env)
    _started.discard(run_dir)
    if proc.returncode != 0:
        raise BrokerError(
            f"stopping the Kafka broker failed (run dir {run_dir}): "
            f"exit {proc.returncode}\n{proc.stderr}"
        )


def _ports_env(run_dir: Path) -> dict[str, str]:
    """The ports of the run dir's last `up` (from its server.properties)."""
    env = {"KAFKA_RUN_DIR": str(run_dir), "KAFKA_PORT": _port_of(run_dir)}
    with contextlib.suppress(OSError):
        for line in (run_dir / "server.properties").read_text().splitlines():
            if line.startswith("controller.quorum.voters="):
                env["KAFKA_CONTROLLER_PORT"] = line.rsplit(":", 1)[1].strip()
    return env


def broker_script(run_dir: Path | str, command: str, *flags: str) -> str:
    """`deploy/kafka/broker COMMAND FLAGS...` on ``run_dir`` with the ports of its last `up`
    (e.g. "down", "up", "up --fresh", "clean"); returns its stdout, raises on failure."""
    run_dir = Path(run_dir).resolve()
    proc = _run(command, _ports_env(run_dir), *flags)
    if command == "up":
        _started.add(run_dir)
    if proc.returncode != 0:
        raise BrokerError(
            f"broker {command} {' '.join(flags)} failed (run dir {run_dir}): "
            f"exit {proc.returncode}\n{proc.stderr}"
        )
    return proc.stdout


def printed_acl_args(line: str) -> list[str]:
    """The arguments of one `kafka-acls.sh ...` line that `frwatch acls` prints, without its
    --bootstrap-server and --command-config (the broker wrapper brings its own)."""
    args: list[str] = []
    skip = False
    for w in shlex.split(line)[1:]:
        if skip:
            skip = False
        elif w in ("--bootstrap-server", "--command-config"):
            skip = True
        else:
            args.append(w)
    return args


def kafka_acls(run_dir: Path | str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """kafka-acls (Kafka's AclCommand) as the secured broker's admin; raises on failure."""
    run_dir = Path(run_dir).resolve()
    proc = subprocess.run(
        [str(BROKER_SCRIPT), "acls", *args],
        env={**os.environ, "KAFKA_RUN_DIR": str(run_dir), "KAFKA_PORT": _port_of(run_dir)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BrokerError(f"kafka-acls {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


def broker_log_tail(run_dir: Path | str, lines: int = 40) -> str:
    """Last lines of the broker's log, for failure reports."""
    log = Path(run_dir) / "broker.log"
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no broker log at {log})"


def _port_of(run_dir: Path) -> str:
    try:
        for line in (run_dir / "server.properties").read_text().splitlines():
            if line.startswith("advertised.listeners="):
                return line.split(",")[0].rsplit(":", 1)[1].strip()
    except OSError:
        pass
    return "9092"


@atexit.register
def _stop_leftovers() -> None:
    # Safety net for callers that never reached their stop_broker().
    for run_dir in list(_started):
        with contextlib.suppress(BrokerError):
            stop_broker(run_dir)


def stop_broker_keeping_data(run_dir: Path | str, timeout_s: float = 30.0) -> list[str]:
    """SIGTERM the broker of ``run_dir`` and wait for it to exit; its data stays.

    Returns the broker's command line, for ``start_broker_again``. (``broker down`` and
    ``up`` keep the data too, but take a script run each; this is the quick way.)
    """
    run_dir = Path(run_dir).resolve()
    pid = int((run_dir / "broker.pid").read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
        time.sleep(0.2)
    return [a.decode() for a in argv]


def start_broker_again(run_dir: Path | str, argv: list[str], timeout_s: float = 90.0) -> None:
    """Start the broker stopped by ``stop_broker_keeping_data`` with the same data and ports."""
    run_dir = Path(run_dir).resolve()
    port = int(_port_of(run_dir))
    with open(run_dir / "broker.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    (run_dir / "broker.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"the restarted broker exited:\n{broker_log_tail(run_dir)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"the restarted broker did not listen within {timeout_s:.0f}s")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
