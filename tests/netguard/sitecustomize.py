"""The no-network guard every Python process of a test run carries (tests/test_reliability_security.py).

Python imports ``sitecustomize`` at start-up from ``sys.path``, so with this folder first on PYTHONPATH the
run's own process, its spawned workers and any Python subprocess (all inherit the environment) install the
audit hook below before any other code runs. The hook sees every internet socket use (connect, send, bind
on AF_INET/AF_INET6) and every name lookup, even where the caller would swallow the error: each is appended
to ``$CORDLESION_NETGUARD_LOG`` (one JSON line: pid, parent pid, argv, event, target), then refused
(OSError). Every guarded process also writes a "start" line, which shows the guard reached it. Sockets of
other families (AF_UNIX: multiprocessing's own plumbing) are left alone. Processes that are not Python
(the BIDS validator) are kept off the network by the test's network namespace instead (``unshare -rn``).
"""
import json
import os
import socket
import sys

_LOG = os.environ.get("CORDLESION_NETGUARD_LOG")
_INTERNET = (socket.AF_INET, socket.AF_INET6)
_SOCKET_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind")
_LOOKUP_EVENTS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo")


def _record(kind: str, event: str = "", target: str = "") -> None:
    line = json.dumps({"kind": kind, "pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv,
                       "event": event, "target": target})
    if _LOG:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # one write per line: no mixing
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    else:
        sys.stderr.write(f"netguard: {line}\n")


def _hook(event: str, args: tuple) -> None:
    if event in _SOCKET_EVENTS:
        if args[0].family not in _INTERNET:
            return
        target = args[1]
    elif event in _LOOKUP_EVENTS:
        target = args[0]
    else:
        return
    _record("blocked", event, repr(target))
    raise OSError(f"network access blocked by the test guard: {event} {target!r}")


sys.addaudithook(_hook)
_record("start")
