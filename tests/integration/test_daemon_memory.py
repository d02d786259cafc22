"""The daemon's memory after backups: it comes back down after each one.

Without care it does not: glibc gives new threads arenas of their own and keeps what
they free for later, each backup starts new zstd worker threads, and the resident
size settles at the sum of every arena's high-water mark. With the fix disabled, this
test's daemon went from 51 to 95 MB over ten backups of a 40 MB file and stayed. With
two arenas but glibc's sliding mmap threshold, it stayed more than 8 MiB above its
level after the first backup from the second backup on."""

from __future__ import annotations

import sqlite3

from tests.faults.support import vm_rss_kib, wait_until
from tests.helpers import Daemon, Home, install_stand_in, laravel_sqlite_project

BACKUPS = 10
ROWS = 400_000  # about 40 MB, each row's filler random, so zstd has real work
SETTLED_MIB = 8  # how far above its level after the first backup the RSS may stay


def test_rss_comes_back_after_each_backup(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    database = project / "database" / "app.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("create table filler (id integer primary key, data text)")
        conn.execute(
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < ?)"
            " insert into filler (data) select hex(randomblob(40)) from n",
            (ROWS,),
        )
    conn.close()
    assert daemon.process is not None
    pid = daemon.process.pid

    def back_up(i: int) -> None:
        with sqlite3.connect(database) as conn:  # a change: every command backs up
            conn.execute("insert into users (name) values (?)", (f"new{i}",))
        conn.close()
        result = home.run(["php", "artisan", "migrate"], cwd=project)
        assert result.returncode == 0, result.stderr.decode()

    back_up(0)
    limit = vm_rss_kib(pid) + SETTLED_MIB * 1024
    for i in range(1, BACKUPS):
        back_up(i)
        wait_until(
            lambda: vm_rss_kib(pid) <= limit,
            f"the RSS after backup {i + 1} back under {limit} KiB",
            timeout=10,
        )

    assert len(list(home.backups.glob("*/*/manifest.json"))) == BACKUPS
