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


PRELOAD = __file__.rsplit('/', 2)[0] + '/dist/shims/vebpf-qmp.so'  # built from shims/qmp-preload.c


def monitor_fd(args):
    """The fd of libvirt's listening monitor socket: `-chardev socket,id=charmonitor,fd=N,server=on,…`."""
    for i, a in enumerate(args[:-1]):
        if args[i] not in ('-chardev', '--chardev') or not args[i + 1].startswith('socket,'):
            continue
        opts = args[i + 1].split(',')  # libvirt never puts a comma in these values
        if 'id=charmonitor' not in opts or 'server=on' not in opts:
            continue
        fd = [o[3:] for o in opts if o.startswith('fd=')]
        if len(fd) == 1 and fd[0].isdigit():
            return int(fd[0])
    return None


def hotplug_env(real, args, pol):
    """The environment that loads the hot-plug shim into QEMU (shims/qmp-preload.c), or None.

    The shim watches libvirt's monitor connection from inside QEMU: a hot-plugged virtio-net
    device with rss on gets its eBPF fds at its device_add, and no QMP byte takes a detour.
    """
    lfd = monitor_fd(args)
    if lfd is None:
        return None
    if not os.path.exists(PRELOAD):
        sys.stderr.write('virt-ebpf: %s is missing (run `virt-ebpf install` again): hot-plugged NICs get no eBPF fds\n' % PRELOAD)
        return None
    env = dict(os.environ)
    env.update(LD_PRELOAD=PRELOAD, VIRT_EBPF_QMP_LISTEN=str(lfd), VIRT_EBPF_EMULATOR=real, VIRT_EBPF_POLICY=pol,
               VIRT_EBPF_DOMAIN_NAME=domain_name(args) or '', VIRT_EBPF_DOMAIN_UUID=(option(args, '-uuid') or '').lower())
    return env


def hotplug_wanted(state):
    return state.get('hotplug', True) is not False


def main():
    real, args = sys.argv[1], sys.argv[2:]
    state = domain_state(args)  # read once: policy and hotplug both come from it
    pol = policy(state)
    env = hotplug_env(real, args, pol) if hotplug_wanted(state) else None
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
    for fd in fds:
        os.set_inheritable(fd, True)  # ours are close-on-exec (PEP 446); QEMU must inherit them
    for k, fd in enumerate(fds):  # the broker wrote @virt-ebpf-fd:K@ for the K-th fd
        argv = [a.replace('@virt-ebpf-fd:%d@' % k, str(fd)) for a in argv]
    if env is None:
        os.execv(real, [real] + argv)
    os.execve(real, [real] + argv, env)


main()
