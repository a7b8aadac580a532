"""A throwaway PostgreSQL server for the tests and benchmarks: `start_postgres_server(tmpdir)`.

The server runs from the Debian/Ubuntu binaries (`initdb`, `pg_ctl`; package `postgresql`) on a free loopback
port, in a fresh data directory, with trust authentication and durability switched off (fsync, synchronous
commit) because test data is thrown away. PostgreSQL refuses to run as root, so when the tests run as root the
data directory is handed to the `postgres` system user and every server command runs through `runuser`.

Tests reach it through the fixtures of `tests/conftest.py` (`pg_server`: one server per session; `pg_url`: a fresh
schema on it per test); `benchmarks/bench_store.py` imports this module directly.
`create_schema(url, name)` returns the URL of a fresh empty schema on the same server (one per test keeps tests
independent, since every store uses the single study "sweepdae").
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

_USER = "sweepdae"  # the database superuser created by initdb (trust auth on loopback only)


def find_postgres_bin() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: $SWEEPDAE_PG_BIN, then PATH, then /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    if os.environ.get("SWEEPDAE_PG_BIN"):
        candidates.append(Path(os.environ["SWEEPDAE_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    # Debian keeps server binaries off PATH, one directory per major version; prefer the newest.
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _major(p), reverse=True)
    candidates.extend(Path(p) for p in versions)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def postgres_unavailable_reason() -> str | None:
    """Why a test server cannot be started here (None when it can): missing binaries or no non-root user."""
    if find_postgres_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed: pip install 'sweepdae[postgres]'"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing: PostgreSQL refuses to run as root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user: apt install postgresql"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One running test server; `url` reaches its `postgres` database as the trusted superuser."""

    bin_dir: Path
    data_dir: Path
    port: int
    _owned_dir: Path | None = None  # a directory we created (root case) and remove on stop
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, args: Sequence[str], timeout: float = 60) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def _options(self) -> str:
        # fsync/synchronous_commit/full_page_writes off: test data is disposable, so durability buys nothing.
        # unix_socket_directories='' keeps the server on loopback TCP only (no socket path length limits).
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 "
            # Little WAL (1 MB segments from initdb, recycled early): the data dir stays small and quick to delete.
            "-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=16MB -c min_wal_size=4MB"
        )

    def start(self) -> None:
        self._run(["pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l",
                   str(self.data_dir / "server.log"), "-o", self._options()])

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every open connection is cut, the server comes back on the same port."""
        self._run(["pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir), "-l",
                   str(self.data_dir / "server.log"), "-o", self._options()])

    def shutdown(self) -> None:
        """`pg_ctl stop -m fast`, keeping the data: `start()` brings the same server back (outage tests)."""
        self._run(["pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir)])

    def stop(self) -> None:
        """Stop for good and delete the data directory we created. Idempotent (also registered with atexit)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._run(["pg_ctl", "stop", "-w", "-t", "60", "-m", "immediate", "-D", str(self.data_dir)])
        finally:
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)


def start_postgres_server(tmpdir: str | os.PathLike[str]) -> PostgresServer:
    """initdb + start a server on a free loopback port; raises RuntimeError when it cannot."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt install postgresql")
    owned: Path | None = None
    if os.geteuid() == 0:
        # pytest's tmp dirs live under a root-only (0700) parent the postgres user cannot traverse: use a
        # fresh directory of our own in the system temp dir and hand it to postgres.
        owned = Path(tempfile.mkdtemp(prefix="sweepdae-pg-"))
        entry = pwd.getpwnam("postgres")
        os.chown(owned, entry.pw_uid, entry.pw_gid)
        data_dir = owned / "data"
    else:
        data_dir = Path(tmpdir) / "pgdata"
    server = PostgresServer(bin_dir=bin_dir, data_dir=data_dir, port=0, _owned_dir=owned)
    try:
        server._run(["initdb", "-D", str(data_dir), "-U", _USER, "--auth=trust", "--encoding=UTF8", "--no-sync",
                     "--wal-segsize=1"])
        # The free port may be taken between the check and the bind: try a few.
        last: Exception | None = None
        for _ in range(3):
            server.port = free_port()
            try:
                server.start()
                _wait_ready(server.url)
                atexit.register(server.stop)  # no orphaned postmaster if the session dies before teardown
                return server
            except RuntimeError as exc:
                last = exc
        raise RuntimeError(f"could not start PostgreSQL: {last}")
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise


def _wait_ready(url: str, timeout: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def create_schema(url: str, name: str) -> str:
    """Create the empty schema `name` on the server behind `url` and return a URL whose connections use it
    (libpq `options=-csearch_path=name`). Far cheaper than a database per test: no template copy, no files."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={name}')}"
