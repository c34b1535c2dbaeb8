"""A throwaway PostgreSQL server for tests: Debian's postgresql binaries, a temp data folder, a free localhost port.

PostgreSQL refuses to run as root (as CI does), so there it runs as the `postgres` user the package creates."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tests.conftest import free_port


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (scripts/test.sh does)")
    return found


@contextmanager
def postgres_server(user: str = "dagster", db: str = "dagster") -> Iterator[dict[str, str]]:
    """Start a server; yield its connection settings (host, port, user, db); stop it and remove its data."""
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = [_bin("runuser"), "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*run_as, _bin("initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*run_as, _bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([*run_as, _bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db], check=True,
                       capture_output=True)
        yield {"host": "127.0.0.1", "port": str(port), "user": user, "db": db}
    finally:
        subprocess.run([*run_as, _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
