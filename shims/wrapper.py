# virt-ebpf emulator wrapper shim: `python3 -I -S wrapper.py REAL ARGS...`, run by the generated
# wrapper script as libvirt's QEMU user for command lines that mention rss. Python starts in a
# few ms where Node takes ~50: this is on the path of every `virsh start`.
#
# It only moves bytes and fds. The broker plans the command line (src/broker/server.ts,
# `exec-plan`) and hands over the fds; the shim puts the fd numbers it received where the
# broker wrote placeholders and execs the real QEMU in this same pid (libvirt watches it).
# Only when the broker cannot be asked does it decide something itself: the policy.
# Start-up time is the point of this file: `json` and `socket` would pull in re, enum and
# selectors (~9 ms). Their C halves (_json, _socket) have everything used here.
import _json
import _socket


def dumps(v):
    """JSON for our requests: dicts, lists, strings, ints."""
    if isinstance(v, str):
        return _json.encode_basestring_ascii(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return '[' + ','.join(map(dumps, v)) + ']'
    return '{' + ','.join(dumps(k) + ':' + dumps(x) for k, x in v.items()) + '}'


class _Decoding:
    """The settings json.JSONDecoder hands to _json's scanner (plain JSON, strict)."""
    strict = True
    object_hook = object_pairs_hook = parse_constant = None
    parse_float = float
    parse_int = int


def loads(text):
    return _json.make_scanner(_Decoding())(text, 0)[0]
import os
import sys

SOCKET = os.environ.get('VIRT_EBPF_BROKER_SOCKET', '/run/virt-ebpf/broker.sock')
STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')
CONFIG = '/etc/virt-ebpf/config.json'
REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`'


class Refused(Exception):
    """The broker could not be asked or said no; str() is the one-line message."""


def exec_plan(real, args):
    """Ask the broker; returns (argv or None, received fds)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        try:
            s.connect(SOCKET)
        except OSError as e:
            raise Refused('cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, e.strerror or e, REMEDY))
        s.sendall(dumps({'v': 1, 'id': 1, 'op': 'exec-plan', 'emulator': real, 'argv': args}).encode() + b'\n')
        buf, fds = b'', []
        while b'\n' not in buf:
            try:
                data, anc, _, _ = s.recvmsg(1 << 20, _socket.CMSG_SPACE(253 * 4))
            except TimeoutError:
                raise Refused('cannot reach the virt-ebpf broker at %s: no reply within 10000 ms (BROKER_UNREACHABLE); %s' % (SOCKET, REMEDY))
            for level, kind, cdata in anc:  # SCM_RIGHTS: an array of C ints
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += [int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(cdata) - 3, 4)]
            if not data:
                raise Refused('cannot reach the virt-ebpf broker at %s: the broker closed the connection without a reply (BROKER_UNREACHABLE); %s' % (SOCKET, REMEDY))
            buf += data
    finally:
        s.close()
    reply = loads(buf[:buf.index(b'\n')].decode())
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
    if v.startswith('guest='):
        v = v[len('guest='):]
    name, i = '', 0
    while i < len(v) and (v[i] != ',' or v[i:i + 2] == ',,'):
        name += v[i]
        i += 2 if v[i:i + 2] == ',,' else 1
    return name


def read_policy(path):
    try:
        with open(path) as f:
            p = loads(f.read()).get('policy')
        return p if p in ('strict', 'fallback') else None
    except (OSError, ValueError, AttributeError, StopIteration):  # StopIteration: _json on broken JSON
        return None


def policy(args):
    """Same order as src/wrapper/policy.ts resolvePolicy: per domain, global, strict."""
    uuid = option(args, '-uuid') or ''
    is_uuid = len(uuid) == 36 and all(c in '0123456789abcdefABCDEF-' for c in uuid)
    per_domain = read_policy('%s/%s.json' % (STATE_DIR, uuid.lower())) if is_uuid else None
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
    for k, fd in enumerate(fds):  # the broker wrote @virt-ebpf-fd:K@ for the K-th fd
        argv = [a.replace('@virt-ebpf-fd:%d@' % k, str(fd)) for a in argv]
    os.execv(real, [real] + argv)


main()
