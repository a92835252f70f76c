#!/usr/bin/env python3
"""
Hostile and careless broker peers, each in its own process so SO_PEERCRED sees exactly the
account it runs as:

    peers.py UID GID SOCKET ACTION [ARG...] [-- EXTRA ARGV...]

The process drops to UID/GID (no supplementary groups) before it connects. Anything after `--`
is ignored by the peer but stays in its /proc/PID/cmdline (a peer can claim to be a domain's
wrapper by carrying `-uuid U` there). One JSON line on stdout says what happened.

Actions:
  hangup N              connect and hang up N times; every other time shutdown(SHUT_RD) first
  flood N LINE          send LINE N times on one connection without reading, then close
  leave LINE            send LINE and close at once (a client that gave up waiting)
  ask LINE              send LINE, read one reply line and its fds; print both
  ask-many N LINE       N connections each send LINE and read their reply (sequentially)
  transcript LINE [S]   send LINE (may hold several lines), read every reply line until EOF
  hold N SECONDS        open N connections, keep them idle; report how many the broker closed
  slowloris SECONDS     send one byte every 200 ms of an endless line; report when it was cut off
  frames N SEED         N random and mutated request frames (one connection each, in batches),
                        then report; replies are read but not checked
"""
import array
import json
import os
import random
import select
import socket
import sys
import time


def drop(uid, gid):
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def connect(path, timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_reply(s):
    """One reply line and the fds that came with it (closed again); None on EOF."""
    data = b""
    nfds = 0
    while b"\n" not in data:
        msg, anc, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
                nfds += len(fds)
                for fd in fds:
                    os.close(fd)
        if not msg:
            return None, nfds
        data += msg
    return json.loads(data.split(b"\n", 1)[0]), nfds


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hangup(path, n):
    done = 0
    for i in range(int(n)):
        try:
            s = connect(path)
            if i % 2:
                s.shutdown(socket.SHUT_RD)
            s.close()
            done += 1
        except OSError:
            pass
    out({"hangups": done})


def flood(path, n, line):
    s = connect(path)
    s.setblocking(False)
    data = (line + "\n").encode()
    sent = 0
    deadline = time.time() + 20
    for _ in range(int(n)):
        off = 0
        while off < len(data):
            try:
                off += s.send(data[off:])
            except BlockingIOError:
                if time.time() > deadline:
                    break
                select.select([], [s], [], 0.05)
            except OSError:
                out({"sent": sent, "cut": True})
                return
        sent += 1
    s.close()
    out({"sent": sent, "cut": False})


def leave(path, line):
    s = connect(path)
    s.sendall((line + "\n").encode())
    s.close()
    out({"left": True})


def ask(path, line):
    s = connect(path, 60.0)
    s.sendall((line + "\n").encode())
    try:
        reply, nfds = read_reply(s)
    except (OSError, ValueError) as e:
        out({"error": str(e)})
        return
    out({"reply": reply, "fds": nfds})


def transcript(path, line, seconds="10"):
    s = connect(path, float(seconds))
    s.sendall((line + "\n").encode())
    data = b""
    eof = False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                eof = True
                break
            data += d
    except OSError:
        pass
    out({"lines": [json.loads(x) for x in data.split(b"\n") if x], "eof": eof})


def ask_many(path, n, line):
    replies = []
    for _ in range(int(n)):
        try:
            s = connect(path, 60.0)
            s.sendall((line + "\n").encode())
            reply, nfds = read_reply(s)
            s.close()
            replies.append({"reply": reply, "fds": nfds})
        except (OSError, ValueError) as e:
            replies.append({"error": str(e)})
    out({"replies": replies})


def hold(path, n, seconds, begin=b""):
    """n connections (each sending begin, if any, and nothing more), held for seconds; then how
    many the broker closed."""
    socks = []
    for _ in range(int(n)):
        try:
            s = connect(path)
            if begin:
                s.send(begin)
            socks.append(s)
        except OSError:
            break
    time.sleep(float(seconds))
    closed = 0
    for s in socks:
        # Closed by the broker: EOF after whatever last line it sent (a refusal, say).
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if d == b"":
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    out({"opened": len(socks), "closedByBroker": closed})


def pin(path, n, seconds):
    """n connections, each with a request line begun and never finished, held for seconds."""
    hold(path, n, seconds, b'{"v":1,"id":1,"op":"hello"')


def bulk(path, n, size, seconds):
    """n connections, each with an unfinished request line of size bytes, held for seconds; then
    how many the broker refused (an error line, or the connection closed) and the codes it gave."""
    socks, refused, codes = [], 0, []
    for _ in range(int(n)):
        try:
            s = connect(path)
            s.sendall(b'{"v":1,"id":1,"op":"hello","pad":"' + b"x" * int(size))
            socks.append(s)
        except OSError:
            refused += 1
    time.sleep(float(seconds))
    for s in socks:
        s.setblocking(False)
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if d == b"":
                    break
                data += d
        except BlockingIOError:
            pass
        except OSError:
            pass
        if data:
            refused += 1
            try:
                codes.append(json.loads(data.split(b"\n")[0])["error"]["code"])
            except (ValueError, KeyError, TypeError):
                codes.append("?")
        s.close()
    out({"opened": len(socks), "refused": refused, "codes": codes})


def slowloris(path, seconds):
    s = connect(path)
    t0 = time.time()
    s.setblocking(False)
    s.send(b'{"v":1,"id":1,"op":"hello"')
    while time.time() - t0 < float(seconds):
        try:
            s.send(b" ")
            r, _, _ = select.select([s], [], [], 0.2)
            if r and s.recv(4096) == b"":
                out({"cutAfter": round(time.time() - t0, 2)})
                return
        except (BlockingIOError, InterruptedError):
            time.sleep(0.2)
        except OSError:
            out({"cutAfter": round(time.time() - t0, 2)})
            return
    out({"cutAfter": None})


OPS = ["hello", "status", "acquire", "prewarm", "release", "exec-plan", "device-plan", "hook", "nope"]


def random_frame(rng):
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return b"{" * rng.randrange(1, 5000)
    if kind == 2:
        return json.dumps(rng.choice([None, 1, "x", [], [1, 2], {"v": 1}])).encode()
    req = {"v": rng.choice([1, 1, 1, 2, "1", None]), "id": rng.choice([1, 0, -1, 2**60, "1", 1.5]), "op": rng.choice(OPS)}
    for key in rng.sample(["emulator", "count", "domain", "argv", "line", "event", "name", "xml", "extra"], rng.randrange(0, 4)):
        req[key] = rng.choice([
            "/usr/bin/qemu-system-x86_64", "/usr/bin/id", "relative", "", "\u0000", 0, 17, -1, 2**40, None, True,
            {"uuid": "00000000-0000-0000-0000-000000000001"}, {"name": "x" * 300}, ["-device", "virtio-net-pci,rss=on"],
            ["x"] * 5000, "prepare", "<domain/>", {"a": [{"b": [{}]}]},
        ])
    text = json.dumps(req).encode()
    if kind >= 8 and text:  # mutate a valid-looking frame
        b = bytearray(text)
        for _ in range(rng.randrange(1, 8)):
            op = rng.randrange(3)
            pos = rng.randrange(len(b))
            if op == 0:
                b[pos] = rng.randrange(256)
            elif op == 1:
                del b[pos]
            else:
                b.insert(pos, rng.randrange(256))
        text = bytes(b)
    return text.replace(b"\n", b" ")


def frames(path, n, seed):
    rng = random.Random(int(seed))
    n = int(n)
    sent = 0
    replies = 0
    batch = 50
    while sent < n:
        socks = []
        for _ in range(min(batch, n - sent)):
            try:
                s = connect(path, 10.0)
            except OSError:
                time.sleep(0.05)
                continue
            frame = b"\n".join(random_frame(rng) for _ in range(rng.randrange(1, 4))) + b"\n"
            try:
                s.sendall(frame)
            except OSError:
                pass
            socks.append(s)
            sent += frame.count(b"\n")
        for s in socks:
            try:
                s.settimeout(10.0)
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    replies += d.count(b"\n")
                    if rng.random() < 0.5:
                        break
            except OSError:
                pass
            s.close()
    out({"frames": sent, "replyLines": replies})


def main():
    argv = sys.argv[1:]
    if "--" in argv:
        argv = argv[: argv.index("--")]
    uid, gid, path, action, *args = argv
    drop(int(uid), int(gid))
    {
        "hangup": hangup,
        "flood": flood,
        "leave": leave,
        "ask": ask,
        "ask-many": ask_many,
        "transcript": transcript,
        "hold": hold,
        "slowloris": slowloris,
        "pin": pin,
        "bulk": bulk,
        "frames": frames,
    }[action](path, *args)


if __name__ == "__main__":
    main()
