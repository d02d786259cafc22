"""MySQL and MariaDB: dumps by the server's own tool, restore by one RENAME TABLE.

Backup. mariadb-dump or mysqldump (the one matching the server's flavour first) runs
with `--single-transaction --quick`, routines, triggers and events, and without
`--databases`, so the dump holds no CREATE DATABASE or USE and restores into any
schema. On MariaDB, where every text column is UTF-8 and every column of a built-in
type, it writes values as stored (binary names: the tool's cheapest escaping); a dump
whose own table definitions show otherwise (a table changed meanwhile) fails. Elsewhere
utf8mb4, with hex for binary data (engine.MysqlEngine._tool_argv says why). Its output
streams into the sink a megabyte at a time; nothing holds the whole dump. The password
reaches the tool in a 0600 option file in the backup's scratch folder (created
O_EXCL|O_NOFOLLOW, removed afterwards), never in argv or the environment; the tool
reads no other option file. Without either tool, a PyMySQL dumper (pydump.py) writes
the same layout from one consistent snapshot. Row
counts for the manifest come from the dump itself (sqltext.DumpScanner), so they are
exactly the snapshot's. A tool that fails, is killed, times out or ends without its
`-- Dump completed` line fails the backup. So does a dump that waits more than 60 s
for a lock another session holds (LOCK TABLES, an ALTER queued behind an open
transaction): the server would let it wait a year; the message names who holds the
lock (locks.py).

Change signal. An InnoDB counter: on MariaDB the transaction id counter, which purge
and flushing do not move (sequences excepted: they write without a transaction id, so a
database with one uses the log sequence number), and on MySQL the log sequence number
(engine._innodb_counter says why). That holds with the binary log on too: a session
with sql_log_bin = 0 commits without moving the log's position. Where a table is MyISAM
or Aria, whose writes leave no trace in InnoDB, the binary log's position as well, when
the log is on, unfiltered and holds everything applied here (no replication connection
or Galera node, or log_slave_updates on); else no signal, and every command backs up.
The one write such a database's signal cannot see is a privileged session's with
sql_log_bin = 0 to its MyISAM or Aria table (README, Limits). Views, triggers,
routines and events are not InnoDB data in MariaDB, so a digest of their definitions
(and of the tables' definitions) is part of every fingerprint; a check on MariaDB reads
the catalogs again only when the server's statement counters moved
(engine._UNCHANGED_SQL says when that is sound). The fingerprint names the server and
the kept connection it was read on, so values from different servers, or from before a
reconnect, never compare equal. A backup's own fingerprint is read before its snapshot,
and dropped when another transaction had written something at that moment
(engine.MysqlEngine._no_writers says why).

Restore. The dump's table statements run in a new scratch schema; its views,
triggers and routines are created there too, to prove they can be. Then one RENAME
TABLE moves the target's tables to a holding schema and the restored tables into the
target, and the backup's views, triggers, routines and events are created in the
target (MySQL refuses to move views, and tables with triggers, across schemas). If
that fails, everything moves back. Other sessions using the target stop the restore
unless the caller asks to end them. Verify loads the dump into a scratch schema,
counts rows, and drops it. A verify or restore that is killed cannot drop its scratch
schema; the next one on the same server does (engine.claim_scratch).
"""

from dbguard.engines.mysql.engine import FORMAT, MysqlEngine

__all__ = ["FORMAT", "MysqlEngine"]
