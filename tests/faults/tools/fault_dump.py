"""A dump tool that misbehaves on purpose: installed as `pg_dump` or `mariadb-dump` in a
folder the daemon searches, it answers `--version` like a tool dbguard will choose and
then does what `fault.json` beside it says (read on every run, so one daemon can meet
several faults):

    real      run the real tool (exec), as if nothing were wrong
    fail      print an error that contains the password to stderr, exit 1
    truncate  run the real tool and pass on only the first part of its output, exit 0
    hang      write a little output, then wait forever (until the watchdog kills it)
    gate      run the real tool, pass on the first `bytes` bytes, create `ready`, wait
              for `release` to exist, pass on the rest and exit as the real tool did

Every run writes its pid (and the real tool's, if any) to `pids` when that is set.
Only the standard library: it must start fast and run under any interpreter.
"""

import ctypes
import glob
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

NAME = os.path.basename(sys.argv[0])
HERE = os.path.dirname(os.path.abspath(sys.argv[0]))
ARGS = sys.argv[1:]
GATE_LIMIT = 300.0  # seconds a gated run waits for `release` before giving up


def real_tool() -> str:
    if NAME == "pg_dump":
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
            key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
        )
        return found[-1]
    return f"/usr/bin/{NAME}"


def version() -> None:
    if NAME == "pg_dump":
        # Newer than any real one, so dbguard picks this pg_dump over the installed ones.
        print("pg_dump (PostgreSQL) 99.0")
    else:
        out = subprocess.run([real_tool(), "--version"], capture_output=True, check=False)
        sys.stdout.write(out.stdout.decode())


def die_with_parent() -> None:
    # The real tool must not outlive this stand-in when the watchdog kills it.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def record_pids(spec: dict[str, str], *pids: int) -> None:
    if spec.get("pids"):
        with open(spec["pids"] + ".part", "w") as file:
            file.write(" ".join(str(p) for p in pids))
        os.replace(spec["pids"] + ".part", spec["pids"])


def option_file_password() -> str:
    """The password as mariadb-dump gets it: from the --defaults-file dbguard wrote."""
    for arg in ARGS:
        if arg.startswith("--defaults-file="):
            with open(arg.split("=", 1)[1]) as file:
                for line in file:
                    if line.startswith("password="):
                        return line.split("=", 1)[1].strip()
    return ""


def cut_point(data: bytes) -> int:
    """Half way, moved back until the kept part does not end in five zero bytes (the
    shape of a whole custom-format archive): the output must really look cut off."""
    cut = len(data) // 2
    while cut > 5 and data[cut - 5 : cut] == b"\0" * 5:
        cut -= 1
    return cut


def main() -> int:
    if ARGS[:1] == ["--version"]:
        version()
        return 0
    with open(os.path.join(HERE, "fault.json")) as file:
        spec: dict[str, Any] = json.load(file)
    mode = spec["mode"]
    if mode == "real":
        os.execv(real_tool(), [real_tool(), *ARGS])  # noqa: S606 (argv, no shell)
    if mode == "fail":
        secret = os.environ.get("PGPASSWORD", "") or option_file_password()
        sys.stderr.write(f"{NAME}: error: connection failed: password={secret} rejected\n")
        sys.stderr.write(f"{NAME}: detail: the server said {secret} is wrong\n")
        return 1
    if mode == "say":  # the tool's own failure, as given (a lock timeout's message)
        sys.stderr.write(spec["stderr"])
        return 1
    if mode == "truncate":
        out = subprocess.run([real_tool(), *ARGS], stdout=subprocess.PIPE, check=False)
        if out.returncode != 0:
            return out.returncode
        write_all(out.stdout[: cut_point(out.stdout)])
        return 0
    if mode == "hang":
        record_pids(spec, os.getpid())
        write_all(b"PGDMP" if NAME == "pg_dump" else b"-- MariaDB dump, cut short\n")
        deadline = time.monotonic() + GATE_LIMIT  # never outlive a failed test for long
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return 3
    if mode == "gate":
        child = subprocess.Popen(
            [real_tool(), *ARGS], stdout=subprocess.PIPE, preexec_fn=die_with_parent
        )
        assert child.stdout is not None
        record_pids(spec, os.getpid(), child.pid)
        head = child.stdout.read(int(spec.get("bytes", 4096)))
        write_all(head)
        open(spec["ready"], "w").close()
        deadline = time.monotonic() + GATE_LIMIT
        while not os.path.exists(spec["release"]):
            if time.monotonic() > deadline:
                child.kill()
                return 3
            time.sleep(0.005)
        while chunk := child.stdout.read(1 << 16):
            write_all(chunk)
        code = child.wait()
        if code < 0:
            os.kill(os.getpid(), -code)
        return code
    sys.stderr.write(f"{NAME} (fault stand-in): unknown mode {mode!r}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
