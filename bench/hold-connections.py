"""Opens N keep-alive connections, sends one request on each, reads each answer, then holds
them all open until killed (for bench/memory.sh). Writes READY_FILE once every answer is in.

usage: hold-connections.py N PORT PATH READY_FILE [HEADER]
"""

import socket
import sys
import time

n, port, path, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
header = sys.argv[5] + "\r\n" if len(sys.argv) > 5 and sys.argv[5] else ""
request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n".encode()


def read_answer(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before the answer")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise SystemExit(f"status {status.decode()}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += sock.recv(65536)


socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    socks.append(s)
for s in socks:
    read_answer(s)
with open(ready, "w") as f:
    f.write("ready\n")
while True:
    time.sleep(3600)
