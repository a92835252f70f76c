#!/usr/bin/env python3
"""
A broker that stops answering, for the hot-plug shim's tests: `stub-broker.py SOCKET REAL N [trickle]`.
It listens on SOCKET (mode 0666) and relays the first N requests to the real broker at REAL,
reply and fds included; every later request is read and never answered (its connection is
kept open), as a broker busy with a load that never ends would look to QEMU. With `trickle`,
those later requests get one blank every second instead, a reply that never ends.
"""
import array
import os
import socket
import sys
import threading
import time

path, real, relay = sys.argv[1], sys.argv[2], int(sys.argv[3])
trickle = len(sys.argv) > 4 and sys.argv[4] == "trickle"
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o666)
srv.listen(16)
held = []
served = 0
lock = threading.Lock()


def read_line(s):
    data = b""
    while b"\n" not in data:
        d = s.recv(65536)
        if not d:
            return None
        data += d
    return data


def relay_one(client, line):
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    up.connect(real)
    up.sendall(line)
    data = b""
    fds = []
    while b"\n" not in data:
        msg, anc, _f, _a = up.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(a)
        if not msg:
            break
        data += msg
    up.close()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    client.sendmsg([data], anc)
    for fd in fds:
        os.close(fd)
    client.close()


def serve(client):
    global served
    line = read_line(client)
    if line is None:
        client.close()
        return
    with lock:
        mine = served
        served += 1
    if mine < relay:
        relay_one(client, line)
    else:
        sys.stdout.write("holding a request\n")
        sys.stdout.flush()
        held.append(client)
        while trickle:
            time.sleep(1)
            try:
                client.send(b" ")
            except OSError:
                return


print("ready", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
