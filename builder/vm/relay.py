"""One guest connection to a server on 127.0.0.1: QEMU's ``guestfwd=...-cmd:`` runs this once per
connection the guest opens, with the connection on stdin/stdout (the ``tcp:`` form of guestfwd
forwards a single connection for the guest's whole life). Standard library only; it connects to
127.0.0.1 and nowhere else.

Usage: python3 relay.py PORT
"""

from __future__ import annotations

import os
import select
import socket
import sys


def main() -> int:
    port = int(sys.argv[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(None)
    ends = {0: sock.fileno(), sock.fileno(): 1}  # read from -> write to
    open_ends = [0, sock.fileno()]
    while open_ends:
        ready, _, _ = select.select(open_ends, [], [], 300)
        if not ready:
            return 1  # idle for 5 minutes: give up
        for fd in ready:
            data = os.read(fd, 1 << 16)
            if not data:
                open_ends.remove(fd)
                if fd == 0:
                    sock.shutdown(socket.SHUT_WR)
                else:
                    return 0  # the server closed: done
                continue
            out, view = ends[fd], memoryview(data)
            while view:
                view = view[os.write(out, view):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
