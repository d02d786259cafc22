"""The Unix socket: permissions, peer check, framing, and the conversation per request."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
from pathlib import Path

import structlog
from pydantic import BaseModel

from dbguard.approvals import ApprovalError
from dbguard.daemon.service import Guard
from dbguard.errors import DbguardError
from dbguard.protocol import (
    MAX_MESSAGE_BYTES,
    Allow,
    Answer,
    ApprovalQuery,
    Approve,
    BackupNow,
    Confirm,
    Error,
    Invoke,
    Lend,
    Lent,
    Ok,
    Progress,
    ProtocolError,
    Report,
    Started,
    StatusQuery,
    Working,
    decode_request,
    encode,
)

log = structlog.get_logger("dbguard.server")

FIRST_LINE_TIMEOUT = 10.0  # seconds a client may take to send its request


class StartupError(DbguardError):
    """The daemon cannot start; the message says why and what to do."""


def prepare_socket_dir(folder: Path) -> None:
    """Create the socket's folder 0700, refusing one that belongs to someone else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid():
        raise StartupError(
            f"{folder} is not a folder owned by you",
            "remove it, or set `socket` in config.toml to a path in a folder of your own",
        )
    if info.st_mode & 0o077:
        folder.chmod(0o700)


SOCKET_CHECK_SECONDS = 5.0  # how often the daemon checks its socket file is still there


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int] | None:
    """The connecting process's (pid, uid), as the kernel names them in this daemon's
    namespaces."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return int(pid), int(uid)


class Server:
    """Serves on `path`, or on `activated`, a listening socket systemd passed us (whose
    file is systemd's: it is never replaced or removed)."""

    def __init__(self, guard: Guard, path: Path, activated: socket.socket | None = None) -> None:
        self.guard = guard
        self.path = path
        self.activated = activated
        self._connections: set[asyncio.Task[None]] = set()
        self._lock_fd: int | None = None
        self._inode: int | None = None  # of the socket file we made

    # ---- lifecycle -------------------------------------------------------------------

    def _claim(self) -> None:
        """One daemon per socket: a lock beside it, then replace a stale socket file."""
        prepare_socket_dir(self.path.parent)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f"another dbguardd (pid {holder})" if holder.isdigit() else "another dbguardd"
            if not self.path.exists():
                raise StartupError(
                    f"{who} holds {lock_path}, but its socket {self.path} is gone",
                    f"stop it (kill {holder or 'it'}); it stops by itself within "
                    f"{SOCKET_CHECK_SECONDS:g} s of losing its socket",
                ) from None
            raise StartupError(
                f"{who} is already serving {self.path}",
                "`dbguardctl status` shows it; stop it first to start a new one",
            ) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        if self.activated is not None:
            return  # systemd's socket file: ours to serve on, not to replace
        if self.path.is_socket():
            if _listening(self.path):
                # Not a daemon (it would hold the lock): systemd's dbguard.socket is
                # listening and will start dbguardd itself.
                raise StartupError(
                    f"something else listens on {self.path} (systemd's dbguard.socket?)",
                    "use `systemctl --user start dbguard.service`, or stop dbguard.socket "
                    "to run dbguardd by hand",
                )
            self.path.unlink()  # stale: its daemon died without cleaning up
        elif self.path.exists() or self.path.is_symlink():
            raise StartupError(f"{self.path} exists and is not a socket", "remove it")

    async def start(self) -> asyncio.AbstractServer:
        self._claim()
        if self.activated is not None:
            try:
                return await asyncio.start_unix_server(
                    self._accept, sock=self.activated, limit=MAX_MESSAGE_BYTES
                )
            except OSError as err:
                raise StartupError(f"cannot serve on the socket systemd passed: {err}") from None
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            server = await asyncio.start_unix_server(
                self._accept, path=str(self.path), limit=MAX_MESSAGE_BYTES
            )
        except OSError as err:
            problem = err.strerror or str(err)  # "AF_UNIX path too long" has no errno
            raise StartupError(
                f"cannot listen on {self.path}: {problem}",
                "choose another socket path (config `socket`, or DBGUARD_SOCKET); a Unix "
                "socket's path is limited to 107 bytes",
            ) from None
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)
        self._inode = self.path.stat().st_ino
        return server

    def socket_lost(self) -> bool:
        """Our socket file was removed or replaced (a cleaned runtime folder, a user's
        rm): nobody can reach this daemon any more."""
        if self._inode is None:
            return False  # systemd's socket: not ours to watch
        try:
            return self.path.stat().st_ino != self._inode
        except OSError:
            return True

    async def stop(self, server: asyncio.AbstractServer) -> None:
        server.close()
        await self.guard.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self.activated is None and not self.socket_lost():
            # systemd keeps its socket for the next start; another daemon's is its own.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # ---- connections -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("connection handler failed")
            with contextlib.suppress(Exception):
                failed = "internal error in dbguardd (a bug); its log has the details"
                await self._send(writer, Error(message=failed, internal=True))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, message: BaseModel) -> None:
        writer.write(encode(message))
        await writer.drain()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readline()
        except ValueError:  # the line exceeded the stream limit
            raise ProtocolError(f"message too large (limit {MAX_MESSAGE_BYTES} bytes)") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        pid, uid = peer if peer is not None else (None, None)
        if uid != os.getuid():
            log.warning("refused connection from another user", peer_uid=uid)
            await self._send(
                writer, Error(message="permission denied: dbguardd serves its own user only")
            )
            return
        try:
            line = await asyncio.wait_for(self._read(reader), FIRST_LINE_TIMEOUT)
            if not line:
                return
            request = decode_request(line)
        except ProtocolError as err:
            await self._send(writer, Error(message=str(err)))
            return
        except TimeoutError:
            await self._send(writer, Error(message="no request received in time"))
            return

        if isinstance(request, Invoke | BackupNow | StatusQuery):
            self.guard.reload_if_changed()

        async def emit(progress: Progress | Working) -> None:
            await self._send(writer, progress)

        async def ask(question: Confirm) -> str | None:
            await self._send(writer, question)
            try:
                answer = decode_request(await self._read(reader))
            except ProtocolError:
                return None
            if isinstance(answer, Answer) and answer.code == question.code:
                return answer.text
            return None

        if isinstance(request, Invoke):
            reply = self.guard.with_config_problem(
                await self.guard.invoke(request, emit, ask, peer=pid)
            )
            try:
                await self._send(writer, reply)
            except BaseException:
                if isinstance(reply, Allow):  # the shim left (^C while backing up)
                    self.guard.finish(reply.op, None, ran=False)
                raise
            if isinstance(reply, Allow):
                await self._follow(reply.op, reader, writer)
        elif isinstance(request, BackupNow):
            done = await self.guard.backup_now(request, emit)
            await self._send(writer, self.guard.with_config_problem(done))
        elif isinstance(request, StatusQuery):
            await self._send(writer, self.guard.status())
        elif isinstance(request, Lend):
            await self._lend(request, pid, reader, writer)
        elif isinstance(request, ApprovalQuery | Approve):
            try:
                if isinstance(request, ApprovalQuery):
                    await self._send(writer, self.guard.approval_info(request.code))
                else:
                    self.guard.approve(request.code, request.text)
                    await self._send(writer, Ok())
            except ApprovalError as err:
                await self._send(writer, Error(message=str(err)))
        else:
            await self._send(writer, Error(message=f"{request.type} without an approved command"))

    async def _lend(
        self,
        request: Lend,
        borrower: int | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """The loan lasts until dbguardctl half-closes the connection, once its restore
        has let go of the database (or the kernel closes it, when dbguardctl dies): the
        commands then hold it again, and `ok` tells dbguardctl so before it opens the
        gate to other restores."""
        loan = (request.op, request.database, borrower)
        if request.probe:
            await self._send(writer, Lent(ops=self.guard.lenders(*loan)))
            return
        lent = self.guard.lend(*loan)
        if not lent:
            await self._send(writer, Lent())
            return
        try:
            await self._send(writer, Lent(ops=lent))
            while await reader.read(1 << 16):
                pass  # nothing more is expected: only the end of the restore
        except ConnectionError:
            pass  # dbguardctl is gone, and with it the restore
        # (Cancelled instead when dbguardd stops: its locks go with it.)
        await self.guard.take_back(lent, request.database)
        with contextlib.suppress(ConnectionError):
            await self._send(writer, Ok())

    async def _follow(
        self, op_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wait for started and report; a closed connection without report means the
        shim died and the outcome is unknown."""
        report: Report | None = None
        try:
            while report is None:
                line = await self._read(reader)
                if not line:
                    break
                message = decode_request(line)
                if isinstance(message, Started) and message.op == op_id:
                    self.guard.started_command(op_id, message.pid)
                elif isinstance(message, Report) and message.op == op_id:
                    report = message
                else:
                    await self._send(writer, Error(message="expected started or report"))
                    break
        except ProtocolError as err:
            with contextlib.suppress(ConnectionError):
                await self._send(writer, Error(message=str(err)))
        except OSError as err:
            if err.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
        finally:
            # Logged before the acknowledgement: once the shim exits, the log is complete.
            self.guard.finish(op_id, report)
        if report is not None:
            with contextlib.suppress(ConnectionError):
                await self._send(writer, Ok())
