"""A guarded command undone, end to end, in a throwaway folder: `python -m dbguard.demo`.

It builds a small project whose .env points at an SQLite database with three users,
starts a private dbguardd, installs a `pytest` shim, and runs a test suite that wipes
the users table -- the incident of tests reading the wrong .env. dbguard backs the
database up before pytest starts; `dbguardctl restore` brings the rows back. Nothing
outside the temporary folder is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dbguard import shims

TEST_FILE = """\
import sqlite3


def test_signup_flow():
    # A test that "cleans up" with the connection string it found in .env.
    conn = sqlite3.connect("database/app.sqlite")
    conn.execute("DELETE FROM users")
    conn.commit()
"""


def step(text: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {text}{plain}", flush=True)


def show(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print(f"$ {' '.join(argv)}", flush=True)
    result = subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True, check=False)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output)
    print(f"(exit {result.returncode})", flush=True)
    return result


def users(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])


def wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dbguardd exited early with {process.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise SystemExit(f"dbguardd did not start within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    if shutil.which("pytest", path=str(bin_dir)) is None:
        print(f"the demo runs pytest; install it next to {sys.executable} first")
        return 1
    root = Path(tempfile.mkdtemp(prefix="dbguard-demo-"))
    project = root / "shop"
    (project / "database").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / ".env").write_text("DATABASE_URL=sqlite:///database/app.sqlite\n")
    (project / "tests" / "test_signup.py").write_text(TEST_FILE)
    db = project / "database" / "app.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.executemany(
            "INSERT INTO users (email) VALUES (?)",
            [("ada@example.com",), ("grace@example.com",), ("linus@example.com",)],
        )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DBGUARD_", "XDG_"))},
        "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "PATH": f"{root / 'shims'}:{bin_dir}:{os.environ.get('PATH', '')}",
        # Only the demo's own test file matters; plugins installed next to it would not.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    (root / "run").mkdir(mode=0o700)
    daemon_log = (root / "dbguardd.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dbguard.daemon.main"], env=env, stdout=daemon_log, stderr=daemon_log
    )
    ctl = ["dbguardctl"]  # the console script next to this Python, first on PATH
    try:
        wait_for(root / "run" / "dbguard" / "dbguard.sock", daemon)
        shims.install(root / "shims", ["pytest"])
        print(f"demo project: {project} (.env -> database/app.sqlite, {users(db)} users)")
        print(f"dbguardd is running; a pytest shim is first on PATH ({root / 'shims'})")

        step("1. A test suite that wipes the database, run through the shim")
        show(["pytest", "-q", "-p", "no:cacheprovider"], project, env)
        print(f"users left in database/app.sqlite: {users(db)}")

        step("2. dbguard took a backup before pytest started")
        listing = show([*ctl, "list-backups"], project, env)
        backup_id = listing.stdout.splitlines()[1].split()[0]

        step("3. Restore it")
        show([*ctl, "restore", backup_id, "--yes"], project, env)
        restored = users(db)
        print(f"users in database/app.sqlite: {restored}")

        step("4. The operation log")
        show([*ctl, "log"], project, env)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        daemon_log.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if restored != 3:
        print("\nthe demo did not get the rows back: that is a bug, please report it")
        return 1
    print("\nThe wiped rows are back. Set it up for real: see README.md, 'Install'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
