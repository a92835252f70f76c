# virt-ebpf emulator wrapper shim: `python3 -I -S wrapper.py REAL ARGS...`, run by the generated
# wrapper script as libvirt's QEMU user for command lines that mention rss. Python starts in a
# few ms where Node takes ~50: this is on the path of every `virsh start`.
#
# It only moves bytes and fds. The broker plans the command line (src/broker/server.ts,
# `exec-plan`) and hands over the fds; the shim puts the fd numbers it received where the
# broker wrote placeholders and execs the real QEMU in this same pid (libvirt watches it).
# Only when the broker cannot be asked does it decide something itself: the policy.
import json
import os
import re
import socket
import sys

SOCKET = os.environ.get('VIRT_EBPF_BROKER_SOCKET', '/run/virt-ebpf/broker.sock')
STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')
CONFIG = '/etc/virt-ebpf/config.json'
MARKER = re.compile(r'@virt-ebpf-fd:(\d+)@')
REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`'


class Refused(Exception):
    """The broker could not be asked or said no; str() is the one-line message."""


def exec_plan(real, args):
    """Ask the broker; returns (argv or None, received fds)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        try:
            s.connect(SOCKET)
        except OSError as e:
            raise Refused('cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, e.strerror or e, REMEDY))
        s.sendall(json.dumps({'v': 1, 'id': 1, 'op': 'exec-plan', 'emulator': real, 'argv': args}).encode() + b'\n')
        buf, fds = b'', []
        while b'\n' not in buf:
            try:
                data, got, _, _ = socket.recv_fds(s, 1 << 20, 253)
            except socket.timeout:
                raise Refused('cannot reach the virt-ebpf broker at %s: no reply within 10000 ms (BROKER_UNREACHABLE); %s' % (SOCKET, REMEDY))
            fds += got
            if not data:
                raise Refused('cannot reach the virt-ebpf broker at %s: the broker closed the connection without a reply (BROKER_UNREACHABLE); %s' % (SOCKET, REMEDY))
            buf += data
    finally:
        s.close()
    reply = json.loads(buf[:buf.index(b'\n')])
    if not reply.get('ok'):
        for fd in fds:
            os.close(fd)
        err = reply.get('error', {})
        raise Refused('broker: %s (%s); %s' % (err.get('message'), err.get('code'), err.get('remedy')))
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
    m = re.match(r'(?:guest=)?((?:[^,]|,,)*)', v)
    return m.group(1).replace(',,', ',')


def read_policy(path):
    try:
        with open(path) as f:
            p = json.load(f).get('policy')
        return p if p in ('strict', 'fallback') else None
    except (OSError, ValueError, AttributeError):
        return None


def policy(args):
    """Same order as src/wrapper/policy.ts resolvePolicy: per domain, global, strict."""
    uuid = option(args, '-uuid') or ''
    per_domain = read_policy('%s/%s.json' % (STATE_DIR, uuid.lower())) if re.fullmatch(r'[0-9a-fA-F-]{36}', uuid) else None
    return per_domain or read_policy(CONFIG) or 'strict'


def main():
    real, args = sys.argv[1], sys.argv[2:]
    try:
        argv, fds = exec_plan(real, args)
    except Refused as e:
        sys.stderr.write('virt-ebpf: %s\n' % e)
        if policy(args) == 'strict':
            sys.exit(1)
        sys.stderr.write('virt-ebpf: policy is fallback: starting %s without eBPF RSS steering\n' % (domain_name(args) or 'the domain'))
        sys.stderr.flush()
        os.execv(real, [real] + args)
    if argv is None:  # no device to steer (e.g. rss=off): run QEMU as asked
        os.execv(real, [real] + args)
    for fd in fds:
        os.set_inheritable(fd, True)  # ours are close-on-exec (PEP 446); QEMU must inherit them
    argv = [MARKER.sub(lambda m: str(fds[int(m.group(1))]), a) for a in argv]
    os.execv(real, [real] + argv)


main()
