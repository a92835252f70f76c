# virt-ebpf QMP interposer: sits between libvirt's monitor connection and QEMU's monitor so a
# hot-plugged virtio-net NIC with rss on gets its eBPF fds. Started by the emulator wrapper
# (shims/wrapper.py) as libvirt's QEMU user, one per domain, before the wrapper execs QEMU:
#
#   python3 -I -S interposer.py LISTEN_FD QEMU_FD CLIENT_FD QEMU_PID REAL POLICY NAME UUID
#
#   LISTEN_FD  libvirt's pre-opened monitor socket (listening); a restarted libvirtd connects here
#   QEMU_FD    our end of the socketpair QEMU uses as its monitor (`-chardev socket,fd=…`)
#   CLIENT_FD  from:N — the wrapper sends libvirt's connection (SCM_RIGHTS) on fd N once it
#              has accepted it (EOF: the domain did not start; we exit); or the connection's
#              own fd number; or -1: accept one from LISTEN_FD
#   QEMU_PID   the wrapper's pid, which QEMU keeps when the wrapper execs it
#
# Everything passes through unchanged, fds that libvirt sends with SCM_RIGHTS included, except
# a `device_add` of a virtio-net device with rss on and no eBPF fds: it gets the fds from the
# broker, hands them to QEMU with `getfd` under unique names and adds "ebpf-rss-fds": [names].
# Replies to our own commands (ids "virt-ebpf-…") never reach libvirt.
#
# Nothing of ours may disconnect libvirt from QEMU (libvirt takes monitor EOF as QEMU's death):
#  - QEMU itself holds a copy of every socket here (the wrapper leaves them open across exec;
#    after a libvirtd restart the new connection is handed to QEMU with `getfd`), so no exit or
#    kill of ours closes a connection: at worst a command waits until the relay is back.
#  - Two processes watch each other: the relay and a keeper holding the same sockets. When one
#    dies (kill -9 included), the other starts a new one; a new relay resumes from the kernel's
#    socket buffers.
import json
import os
import select
import signal
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit('/', 1)[0])  # -I leaves the script's own directory out
sys.dont_write_bytecode = True  # never leave __pycache__ in the installed (root-owned) prefix
from brokercall import Refused, call  # noqa: E402

OWN = 'virt-ebpf-'
OWN_B = OWN.encode()
CMSG_FDS = socket.CMSG_SPACE(64 * 4)  # room for 64 fds in one message (libvirt sends a few)
MAX_LINE = 64 << 20
VIRTIO_NET = ('virtio-net', 'virtio-net-pci', 'virtio-net-pci-transitional', 'virtio-net-pci-non-transitional', 'virtio-net-device', 'virtio-net-ccw')
TRUE = ('on', 'yes', 'true', 'y')


def set_name(name):
    """The process name ps and tests see: vebpf-relay or vebpf-keeper (comm, 15 bytes)."""
    try:
        with open('/proc/self/comm', 'w') as f:
            f.write(name)
    except OSError:
        pass


def log(msg):
    """One line in the domain's log (QEMU's stderr, which libvirt keeps)."""
    try:
        os.write(2, ('virt-ebpf interposer[%d]: %s\n' % (os.getpid(), msg)).encode())
    except OSError:
        pass


def acquire(real, name, uuid):
    """One RSS context from the broker: ([fds], property name)."""
    domain = {k: v for k, v in (('name', name), ('uuid', uuid)) if v}
    reply, fds = call({'v': 1, 'id': 1, 'op': 'acquire', 'emulator': real, 'count': 1, 'domain': domain})
    ctx = reply['contexts'][0]
    if ctx['property']['name'] != 'ebpf-rss-fds':
        for fd in fds:
            os.close(fd)
        raise Refused('hot-plug needs the ebpf-rss-fds property (QEMU >= 9.0); this emulator uses %s (HOTPLUG_UNSUPPORTED); '
                      'add the NIC to the domain XML and restart the domain' % ctx['property']['name'])
    return fds[:ctx['fds']], ctx['property']['name']


def wants_fds(msg):
    """A device_add of a virtio-net device with rss on that names no eBPF fds of its own."""
    if not isinstance(msg, dict) or msg.get('execute') != 'device_add':
        return False
    a = msg.get('arguments')
    if not isinstance(a, dict) or a.get('driver') not in VIRTIO_NET:
        return False
    rss = a.get('rss')
    on = rss is True or (isinstance(rss, str) and rss in TRUE)
    return on and 'ebpf-rss-fds' not in a and 'ebpf_rss_fds' not in a


class Peer:
    """One side of the relay: a blocking socket (read only when select says so), its unread
    bytes, and the fds that came with them (libvirt's side only: QEMU never sends fds)."""

    def __init__(self, fd, with_fds):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.with_fds = with_fds
        self.buf = b''
        self.fds = []  # [(offset in buf where the message carrying them started, [fds])]

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """False on EOF."""
        try:
            if self.with_fds:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, CMSG_FDS)
                if anc:
                    fds = [int.from_bytes(c[i:i + 4], sys.byteorder, signed=True)
                           for level, kind, c in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                           for i in range(0, len(c) - 3, 4)]
                    self.fds.append((len(self.buf), fds))
            else:
                data = self.sock.recv(1 << 20)
        except InterruptedError:
            return True
        except OSError:
            data = b''
        if not data:
            return False
        self.buf += data
        if len(self.buf) > MAX_LINE and b'\n' not in self.buf:
            raise OSError('a line longer than %d bytes' % MAX_LINE)
        return True

    def lines(self):
        """Complete lines with the fds that arrived with them."""
        while True:
            n = self.buf.find(b'\n') + 1
            if n == 0:
                return
            line, self.buf = self.buf[:n], self.buf[n:]
            if self.fds:
                fds = [f for off, group in self.fds if off < n for f in group]
                self.fds = [(off - n, g) for off, g in self.fds if off >= n]
            else:
                fds = []
            yield line, fds

    def send(self, data, fds=()):
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            data = data[sent:]
        if data:
            self.sock.sendall(data)


class Relay:
    # The common case costs no JSON: libvirt sends hundreds of commands while a domain starts
    # (about 480 for a small q35 guest), and each passes twice through here. Only a line that
    # can matter is parsed: a device_add, a reply that may be ours, the reply to a device_add
    # we changed, and a reconnected libvirt's first command.
    def __init__(self, listen_fd, qemu_fd, client_fd, real, policy, name, uuid, control, respawned):
        self.listen = socket.socket(fileno=listen_fd)
        self.listen.setblocking(False)  # only accept() uses it
        self.qemu = Peer(qemu_fd, with_fds=False)
        self.client = None
        self.real, self.policy, self.name, self.uuid = real, policy, name, uuid
        self.control = control  # socket to the keeper: it learns each new libvirt connection
        self.greeting = None
        self.serial = 0
        # One entry per libvirt command QEMU has not answered yet, oldest first (QEMU answers
        # in order): the libvirt connection it came on, and for a device_add we gave fds to,
        # the fd names to close again if it fails.
        self.due = []
        self.generation = 0
        self.negotiating = False  # a reconnected libvirt: answer its qmp_capabilities ourselves
        if client_fd >= 0:
            self.attach(client_fd, fresh=True)
        if respawned:
            self.greeting = self.synth_greeting()

    def own_id(self):
        self.serial += 1
        return '%s%d-%d' % (OWN, os.getpid(), self.serial)

    def attach(self, fd, fresh):
        self.client = Peer(fd, with_fds=True)
        self.generation += 1
        self.negotiating = not fresh

    # ---- QEMU -> libvirt ----
    def from_qemu(self, line, fds):
        for f in fds:  # QEMU never sends fds on the monitor; never keep one open by accident
            os.close(f)
        if line.startswith(b'{"timestamp"'):
            pass  # an event
        elif line.startswith(b'{"QMP"'):
            if self.greeting is None:
                self.greeting = line
        else:  # a reply
            if OWN_B in line and self.is_own(line):
                return  # a reply to us that nobody waits for (a relay before us died): drop it
            if self.due:
                gen, names = self.due.pop(0)
                if gen != self.generation:
                    return  # answers a command of a libvirt connection that is gone
                if names and b'"error"' in line:
                    self.close_names(names)
        if self.client is not None:
            try:
                self.client.send(line)
            except OSError:
                self.drop_client()

    @staticmethod
    def is_own(line):
        try:
            mid = json.loads(line).get('id')
        except (ValueError, AttributeError):
            return False
        return isinstance(mid, str) and mid.startswith(OWN)

    # ---- libvirt -> QEMU ----
    def from_client(self, line, fds):
        names = None
        if self.negotiating:
            self.negotiating = False
            msg = self.parse(line)
            if isinstance(msg, dict) and msg.get('execute') == 'qmp_capabilities':
                # QEMU's session is already in command mode
                reply = {'return': {}}
                if 'id' in msg:
                    reply['id'] = msg['id']
                self.client.send(json.dumps(reply).encode() + b'\r\n')
                return
        if b'device_add' in line:
            msg = self.parse(line)
            if wants_fds(msg):
                line, fds, names = self.hotplug(msg, line, fds)
                if line is None:
                    return
        if b'"execute"' in line or b'"exec-oob"' in line:  # QEMU answers these, and only these
            self.due.append((self.generation, names))
        self.qemu.send(line, fds)
        for f in fds:
            os.close(f)

    @staticmethod
    def parse(line):
        try:
            return json.loads(line)
        except ValueError:
            return None

    def hotplug(self, msg, line, fds):
        """(line to send instead or None when answered already, fds, our fd names or None)."""
        dev = msg['arguments'].get('id') or 'anon'
        t0 = time.monotonic()
        try:
            bpf, prop = acquire(self.real, self.name, self.uuid)
        except Refused as e:
            return self.without_fds(msg, line, fds, str(e)) + (None,)
        t1 = time.monotonic()
        # Unique across relays too (a new relay starts counting again): pid and serial.
        self.serial += 1
        names = ['%shp-%s-%d-%d-%d' % (OWN, dev, os.getpid(), self.serial, i) for i in range(len(bpf))]
        try:
            ok = self.own_commands([({'execute': 'getfd', 'arguments': {'fdname': n}}, [f]) for n, f in zip(names, bpf)])
        finally:
            for f in bpf:
                os.close(f)
        if ok is not True:
            self.close_names(names)
            return self.without_fds(msg, line, fds, 'QEMU refused the eBPF fds: %s' % ok) + (None,)
        args = dict(msg['arguments'])
        args[prop] = names
        out = dict(msg)
        out['arguments'] = args
        log('device_add %s: eBPF RSS fds %s (broker %.1f ms, getfd %.1f ms)' % (dev, ','.join(names), (t1 - t0) * 1e3, (time.monotonic() - t1) * 1e3))
        return json.dumps(out).encode() + b'\r\n', fds, names

    def without_fds(self, msg, line, fds, why):
        """No eBPF fds for this device_add: strict answers libvirt with an error, fallback sends it on."""
        dev = msg['arguments'].get('id') or 'anon'
        if self.policy == 'strict':
            log('device_add %s refused: %s' % (dev, why))
            self.reply_error(msg, 'virt-ebpf: %s' % why)
            for f in fds:
                os.close(f)
            return None, fds
        log('%s; policy is fallback: %s is added without eBPF RSS steering' % (why, dev))
        return line, fds

    def reply_error(self, msg, desc):
        if self.client is None:
            return
        reply = {'error': {'class': 'GenericError', 'desc': desc}}
        if 'id' in msg:
            reply['id'] = msg['id']
        self.client.send(json.dumps(reply).encode() + b'\r\n')

    def close_names(self, names):
        self.own_commands([({'execute': 'closefd', 'arguments': {'fdname': n}}, []) for n in names])

    def own_commands(self, cmds):
        """Send our commands, relay whatever else QEMU says meanwhile; True or the first error."""
        replies = self.ask_qemu(cmds)
        if replies is None:
            return 'no reply within 10 s'
        errors = [r['error'].get('desc', 'error') for r in replies if 'error' in r]
        return errors[0] if errors else True

    def ask_qemu(self, cmds):
        """Our commands' replies in order (None after 10 s); QEMU's other lines go on to libvirt."""
        ids = []
        for cmd, fds in cmds:
            cmd = dict(cmd)
            cmd['id'] = self.own_id()
            ids.append(cmd['id'])
            self.qemu.send(json.dumps(cmd).encode() + b'\r\n', fds)
        replies = {}
        deadline = time.monotonic() + 10
        while len(replies) < len(ids):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.qemu], [], [], left)[0]:
                return None
            if not self.qemu.read():
                raise EOFError('QEMU closed its monitor')
            for line, fds in self.qemu.lines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and msg.get('id') in ids:
                    replies[msg['id']] = msg
                else:
                    self.from_qemu(line, fds)
        return [replies[i] for i in ids]

    def synth_greeting(self):
        """After a restart of ours: QEMU's greeting again, from query-version."""
        replies = self.ask_qemu([({'execute': 'query-version'}, [])])
        version = replies[0].get('return') if replies else None
        return json.dumps({'QMP': {'version': version or {}, 'capabilities': ['oob']}}).encode() + b'\r\n'

    def drop_client(self):
        if self.client is not None:
            for _, group in self.client.fds:
                for f in group:
                    os.close(f)
            self.client.sock.close()
            self.client = None
            # Replies still due belong to a connection that is gone: keep counting them (QEMU
            # answers in order) so they are dropped, not sent to the next libvirt.
            self.tell_keeper(None)

    def accept(self):
        try:
            fd, _ = self.listen._accept()
        except (BlockingIOError, InterruptedError):
            return
        self.drop_client()
        self.attach(fd, fresh=False)
        self.client.send(self.greeting or b'')
        self.tell_keeper(fd)
        # QEMU keeps a copy too, so no death of ours can close this connection either.
        self.own_commands([({'execute': 'getfd', 'arguments': {'fdname': OWN + 'libvirt-connection'}}, [fd])])
        log('libvirt reconnected')

    def tell_keeper(self, fd):
        if self.control is None:
            return
        try:
            if fd is None:
                self.control.send(b'-')
            else:
                socket.send_fds(self.control, [b'+'], [fd])
        except OSError:
            pass

    def run(self):
        while True:
            watch = [self.qemu, self.listen]
            if self.client is not None:
                watch.append(self.client)
            if self.control is not None:
                watch.append(self.control)
            client = self.client
            for r in select.select(watch, [], [])[0]:
                if r is self.qemu:
                    if not self.qemu.read():
                        return  # QEMU is gone
                    for line, fds in self.qemu.lines():
                        self.from_qemu(line, fds)
                elif r is client:
                    if client is not self.client:
                        continue  # dropped meanwhile
                    alive = client.read()
                    for line, fds in client.lines():
                        self.from_client(line, fds)
                    if not alive:
                        log('libvirt closed its monitor connection; waiting for it to reconnect')
                        self.drop_client()
                elif r is self.listen:
                    self.accept()
                elif r is self.control:
                    try:
                        gone = self.control.recv(1) == b''
                    except OSError:
                        gone = True
                    if gone:  # the keeper died: start another one
                        self.control.close()
                        self.control = start_keeper(self)


# ---- the pair of processes that keep each other alive ----
ARGS = {}


def start_keeper(relay):
    """Fork a keeper for this relay; returns the relay's end of their control socket."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        mine.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        client = relay.client.fileno() if relay.client else -1
        keeper(os.getppid(), theirs, client)
        os._exit(0)
    theirs.close()
    return mine


def keeper(relay_pid, control, client_fd):
    """Wait for the relay; if it dies while QEMU lives, start a new relay with the same sockets."""
    set_name('vebpf-keeper')
    client = os.dup(client_fd) if client_fd >= 0 else -1
    try:
        qemu_pidfd = os.pidfd_open(ARGS['qemu_pid'])
    except OSError:
        return  # QEMU is gone already
    while True:
        ready = select.select([qemu_pidfd, control], [], [])[0]
        if qemu_pidfd in ready:
            return
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1, 4)
        except OSError:
            msg, fds = b'', []
        if msg in (b'+', b'-'):  # libvirt's connection changed
            if client >= 0:
                os.close(client)
            client = fds[0] if fds else -1
            continue
        if msg == b'x':  # QEMU closed the monitor: the relay is done, so are we
            return
        # EOF: the relay died (or was killed) while QEMU lives. Start another one.
        control.close()
        try:
            os.waitpid(relay_pid, 0)
        except ChildProcessError:
            pass  # the first relay is our parent, not our child
        if select.select([qemu_pidfd], [], [], 0)[0]:
            return
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the new relay; this keeper watches it
            os.close(qemu_pidfd)
            mine.close()
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
            log('the relay died; a new one takes over')
            run_relay(client, theirs, respawned=True)
            os._exit(0)
        theirs.close()
        control, relay_pid = mine, pid


def run_relay(client_fd, control, respawned):
    set_name('vebpf-relay')
    a = ARGS
    relay = None
    try:
        relay = Relay(a['listen'], a['qemu'], client_fd, a['real'], a['policy'], a['name'], a['uuid'], control, respawned)
        relay.run()
    except EOFError:
        pass
    try:
        (relay.control if relay else control).send(b'x')  # QEMU is gone: the keeper may stop too
    except OSError:
        pass


def main():
    listen_fd, qemu_fd, qemu_pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
    real, policy, name, uuid = sys.argv[5:9]
    client_fd = sys.argv[3]
    if client_fd.startswith('from:'):
        # The wrapper started us before libvirt connected; it sends the connection when it has
        # it, or closes the socket (no start, or no connection): then there is nothing to do.
        hand = socket.socket(fileno=int(client_fd[5:]))
        try:
            _, fds, _, _ = socket.recv_fds(hand, 1, 1)
        except OSError:
            fds = []
        hand.close()
        if not fds:
            return
        client_fd = fds[0]
    else:
        client_fd = int(client_fd)
    ARGS.update(listen=listen_fd, qemu=qemu_fd, real=real, policy=policy, name=name, uuid=uuid, qemu_pid=qemu_pid)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the first keeper
        mine.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        keeper(os.getppid(), theirs, client_fd)
        os._exit(0)
    theirs.close()
    run_relay(client_fd, mine, respawned=False)


if __name__ == '__main__':
    main()
