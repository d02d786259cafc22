"""A stand-in for `php` (and other guarded commands) in the failure tests.

Every run appends one JSON line {"argv", "pid"} to `ran.log` in its working folder, so a
test can prove a command did or did not run, and prints its argv as JSON on stdout, so
a test can tell each command's output from every other's. It understands:

    -v / --version                      print a version and exit
    artisan migrate:fresh | db:wipe     drop every table of the .env's SQLite database
    artisan test [--wait-for-file=F]    create F.ready (holding the pid), wait for F
                 [--exit=N]             exit N
"""

import json
import os
import sqlite3
import sys
import time

WAIT_LIMIT = 300.0  # seconds --wait-for-file waits before giving up


def sqlite_path() -> str | None:
    try:
        with open(".env") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return None
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    if values.get("DB_CONNECTION", "sqlite") != "sqlite":
        return None
    return values.get("DB_DATABASE", "database/database.sqlite")


def main() -> int:
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    line = json.dumps({"argv": argv, "pid": os.getpid()}) + "\n"
    fd = os.open("ran.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)
    args = argv[1:]
    if args[:1] == ["artisan"]:
        args = args[1:]
    if args[:1] in (["-v"], ["--version"]):
        print(f"{argv[0]} 0.0 (dbguard failure-test stand-in)")
        return 0
    print(json.dumps(argv), flush=True)
    command = args[0] if args else ""
    options = dict(a[2:].partition("=")[::2] for a in args[1:] if a.startswith("--"))
    if command in ("migrate:fresh", "db:wipe"):
        path = sqlite_path()
        if path is not None:
            conn = sqlite3.connect(path)
            tables = conn.execute("select name from sqlite_master where type='table'")
            for (table,) in tables.fetchall():
                conn.execute(f'drop table "{table}"')
            conn.commit()
            conn.close()
    if "wait-for-file" in options:
        gate = options["wait-for-file"]
        with open(gate + ".ready.part", "w") as file:
            file.write(str(os.getpid()))
        os.replace(gate + ".ready.part", gate + ".ready")
        deadline = time.monotonic() + WAIT_LIMIT
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    return int(options.get("exit") or 0)


if __name__ == "__main__":
    sys.exit(main())
