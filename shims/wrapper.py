# virt-ebpf emulator wrapper shim: `python3 -I -S wrapper.py REAL ARGS...`, run by the generated
# wrapper script as libvirt's QEMU user for command lines that mention rss. Python starts in a
# few ms where Node takes ~50: this is on the path of every `virsh start`.
#
# It only moves bytes and fds. The broker plans the command line (src/broker/server.ts,
# `exec-plan`) and hands over the fds; the shim puts the fd numbers it received where the
# broker wrote placeholders and execs the real QEMU in this same pid (libvirt watches it).
# Only when the broker cannot be asked does it decide something itself: the policy.
# Start-up time is the point of this file: it imports only C modules and brokercall.py.
import _socket
import os
import sys

sys.path.insert(0, __file__.rsplit('/', 1)[0])  # -I leaves the script's own directory out
sys.dont_write_bytecode = True  # never leave __pycache__ in the installed (root-owned) prefix
from brokercall import Refused, call, loads  # noqa: E402

STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')
CONFIG = '/etc/virt-ebpf/config.json'


def exec_plan(real, args):
    """Ask the broker; returns (argv or None, received fds)."""
    reply, fds = call({'v': 1, 'id': 1, 'op': 'exec-plan', 'emulator': real, 'argv': args})
    return reply['argv'], fds


def option(args, opt):
    """The value after the last `opt` (QEMU accepts -opt and --opt)."""
    v = None
    for i, a in enumerate(args[:-1]):
        if a in (opt, '-' + opt):
            v = args[i + 1]
    return v


def domain_name(args):
    """`-name guest=NAME,…` (or `-name NAME,…`); `,,` is an escaped comma."""
    v = option(args, '-name')
    if v is None:
        return None
    if v.startswith('guest='):
        v = v[len('guest='):]
    name, i = '', 0
    while i < len(v) and (v[i] != ',' or v[i:i + 2] == ',,'):
        name += v[i]
        i += 2 if v[i:i + 2] == ',,' else 1
    return name


def read_json(path):
    try:
        with open(path) as f:
            v = loads(f.read())
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError, AttributeError, StopIteration):  # StopIteration: _json on broken JSON
        return {}


def domain_state(args):
    """What libvirt's hook recorded for this domain at prepare (policy, hotplug), if anything."""
    uuid = option(args, '-uuid') or ''
    is_uuid = len(uuid) == 36 and all(c in '0123456789abcdefABCDEF-' for c in uuid)
    return read_json('%s/%s.json' % (STATE_DIR, uuid.lower())) if is_uuid else {}


def policy(state):
    """Same order as src/wrapper/policy.ts resolvePolicy: per domain (`state`), global, strict."""
    for p in (state.get('policy'), read_json(CONFIG).get('policy')):
        if p in ('strict', 'fallback'):
            return p
    return 'strict'


ACCEPT_TIMEOUT = 10


def monitor(args):
    """(index, fd, other options) of libvirt's monitor: `-chardev socket,id=charmonitor,fd=N,server=on,…`."""
    for i, a in enumerate(args[:-1]):
        if args[i] not in ('-chardev', '--chardev') or not args[i + 1].startswith('socket,'):
            continue
        opts = args[i + 1].split(',')  # libvirt never puts a comma in these values
        if 'id=charmonitor' not in opts or 'server=on' not in opts:
            continue
        fd = [o[3:] for o in opts if o.startswith('fd=')]
        if len(fd) == 1 and fd[0].isdigit():
            rest = [o for o in opts[1:] if o.split('=')[0] not in ('fd', 'server', 'wait')]
            return i + 1, int(fd[0]), rest
    return None


def start_interposer(real, args, pol):
    """Start the QMP interposer (shims/interposer.py) for libvirt's monitor, if there is one.

    It is started first, so its Python start-up overlaps the broker round trip and libvirt's
    connect: the monitor's first byte (QEMU's greeting) waits for it. It gets libvirt's
    connection later, from finish_interposer, over `hand`. Returns the state for that, or None.
    """
    found = monitor(args)
    if found is None:
        return None
    index, lfd, rest = found
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    afd, bfd = ours.detach(), theirs.detach()
    hand_w, hand_r = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    hw, hr = hand_w.detach(), hand_r.detach()
    qemu_pid = os.getpid()  # exec keeps it
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            keep = {0, 1, 2, lfd, afd, hr}
            for name in os.listdir('/proc/self/fd'):  # no tap, vhost or eBPF fd of QEMU's in ours
                if int(name) not in keep:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            for fd in (lfd, afd, hr):
                os.set_inheritable(fd, True)
            shim = __file__.rsplit('/', 1)[0] + '/interposer.py'
            os.execv(sys.executable, [sys.executable, '-I', '-S', shim, str(lfd), str(afd), 'from:%d' % hr, str(qemu_pid), real, pol,
                                      domain_name(args) or '', (option(args, '-uuid') or '').lower()])
        finally:
            os._exit(127)
    os.waitpid(child, 0)
    os.close(hr)
    return index, lfd, rest, afd, bfd, hw


def finish_interposer(args, started):
    """Take libvirt's monitor connection, hand it to the interposer, and give QEMU its end.

    libvirt listens on the monitor socket and connects right after it lets the emulator run,
    so the connection is taken here, before the exec. QEMU gets one end of a socketpair as
    its monitor and keeps copies of every socket, so nothing of ours can ever close libvirt's
    connection. Returns the argv QEMU runs with (unchanged when libvirt never connected).
    """
    index, lfd, rest, afd, bfd, hw = started
    import select
    if not select.select([lfd], [], [], ACCEPT_TIMEOUT)[0]:
        sys.stderr.write('virt-ebpf: libvirt did not connect to the monitor within %d s: hot-plugged NICs get no eBPF fds\n' % ACCEPT_TIMEOUT)
        for fd in (afd, bfd, hw):  # the interposer reads EOF and exits
            os.close(fd)
        return args
    lsock = _socket.socket(fileno=lfd)
    try:
        cfd, _ = lsock._accept()
    finally:
        lsock.detach()
    hand = _socket.socket(fileno=hw)
    try:
        hand.sendmsg([b'+'], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, cfd.to_bytes(4, sys.byteorder, signed=True))])
    finally:
        hand.close()
    for fd in (afd, bfd, cfd):  # QEMU keeps them all: its monitor, and copies that outlive us
        os.set_inheritable(fd, True)
    out = list(args)
    out[index] = ','.join(['socket'] + ['fd=%d' % bfd] + [o for o in rest])
    return out


def hotplug_wanted(state):
    return state.get('hotplug', True) is not False


def main():
    real, args = sys.argv[1], sys.argv[2:]
    state = domain_state(args)  # read once: policy and hotplug both come from it
    pol = policy(state)
    interposer = start_interposer(real, args, pol) if hotplug_wanted(state) else None
    argv, fds = None, []
    if any('rss' in a for a in args):
        try:
            argv, fds = exec_plan(real, args)
        except Refused as e:
            sys.stderr.write('virt-ebpf: %s\n' % e)
            if pol == 'strict':
                sys.exit(1)
            sys.stderr.write('virt-ebpf: policy is fallback: starting %s without eBPF RSS steering\n' % (domain_name(args) or 'the domain'))
            sys.stderr.flush()
    if argv is None:  # no device to steer (e.g. rss=off): run QEMU as asked
        argv = args
    if interposer is not None:
        argv = finish_interposer(argv, interposer)
    for fd in fds:
        os.set_inheritable(fd, True)  # ours are close-on-exec (PEP 446); QEMU must inherit them
    for k, fd in enumerate(fds):  # the broker wrote @virt-ebpf-fd:K@ for the K-th fd
        argv = [a.replace('@virt-ebpf-fd:%d@' % k, str(fd)) for a in argv]
    os.execv(real, [real] + argv)


main()
