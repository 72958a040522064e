"""A tiny DHCP client for namespace tests: send one datagram, print every reply as JSON.

Run inside a client namespace (`ip netns exec NS python -m tests.netns.dhcp_probe ...`):
it binds `0.0.0.0:PORT` on the interface (`SO_BINDTODEVICE`, so it works on an interface
without an address, as a PXE ROM does), sends the hex payload to `--to HOST:PORT`
(broadcast allowed), then collects datagrams for `--listen-s` seconds and prints one JSON
list: `[{"source": [host, port], "payload": "<hex>"}, ...]`. Standard library only, so it
starts fast.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--port", type=int, default=68, help="local port to send from")
    parser.add_argument("--to", required=True, help="HOST:PORT")
    parser.add_argument("--payload", required=True, help="hex")
    parser.add_argument("--listen-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.interface.encode())
    sock.bind(("0.0.0.0", args.port))
    sock.sendto(bytes.fromhex(args.payload), (host, int(port)))
    replies = []
    deadline = time.monotonic() + args.listen_s
    while (left_s := deadline - time.monotonic()) > 0:
        sock.settimeout(left_s)
        try:
            payload, source = sock.recvfrom(65535)
        except TimeoutError:
            break
        replies.append({"source": list(source), "payload": payload.hex()})
    print(json.dumps(replies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
