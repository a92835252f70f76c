# virt-ebpf libvirt hook shim for `prepare begin` and `release end`: `python3 -I -S hook.py NAME
# OP SUBOP EXTRA`, root, domain XML on stdin. The hook's logic runs inside the broker (the `hook`
# op of src/broker/server.ts, src/hook/main.ts runHook); this only forwards the XML and relays
# the answer, so `virsh start` does not wait for a Node start-up here.
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
REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`'
STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')


def ask(event, name, xml):
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(30)  # bounded: a hook that hangs would hang libvirt's start
    try:
        s.connect(SOCKET)
        s.sendall(dumps({'v': 1, 'id': 1, 'op': 'hook', 'event': event, 'name': name, 'xml': xml}).encode() + b'\n')
        buf = b''
        while b'\n' not in buf:
            data = s.recv(1 << 20)
            if not data:
                raise OSError('the broker closed the connection without a reply')
            buf += data
    finally:
        s.close()
    return loads(buf[:buf.index(b'\n')].decode())


def between(text, start, end, at=0):
    """The text between the first `start` from `at` and the next `end`, or None."""
    i = text.find(start, at)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j] if j >= 0 else None


def xml_policy(xml):
    """policy="…" on our `<virt-ebpf:config …>` element (src/xml writes it); absent: strict."""
    tag = between(xml, '<virt-ebpf:config', '>') or ''
    for q in '"\'':
        p = between(tag, ' policy=' + q, q)
        if p in ('strict', 'fallback'):
            return p
    return 'strict'


def state_path(xml):
    uuid = (between(xml, '<uuid>', '</uuid>', max(xml.find('<domain'), 0)) or '').strip()
    ok = len(uuid) == 36 and all(c in '0123456789abcdefABCDEF-' for c in uuid)
    return os.path.join(STATE_DIR, uuid.lower() + '.json') if ok else None


def remember(name, xml, policy):
    """What runHook writes at prepare: the wrapper reads the domain's policy from it."""
    path = state_path(xml)
    if not path:
        return
    uuid = os.path.basename(path)[:-5]
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 'w') as f:
        f.write(dumps({'name': name, 'uuid': uuid, 'policy': policy}) + '\n')


def forget(xml):
    path = state_path(xml)
    if path and os.path.exists(path):
        os.unlink(path)


def main():
    name, op = sys.argv[1], sys.argv[2]
    event = 'prepare' if op == 'prepare' else 'release'
    xml = sys.stdin.read()
    try:
        reply = ask(event, name, xml)
    except (OSError, ValueError, StopIteration) as e:  # StopIteration: _json on a broken reply
        if event == 'release':
            forget(xml)
            sys.exit(0)  # the broker drops unclaimed contexts itself when it restarts
        why = 'no reply within 30000 ms' if isinstance(e, TimeoutError) else (getattr(e, 'strerror', None) or str(e))
        msg = 'virt-ebpf: cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, why, REMEDY)
        policy = xml_policy(xml)
        remember(name, xml, policy)
        if policy == 'fallback':
            sys.stderr.write('%s\nvirt-ebpf: policy is fallback: %s starts without eBPF RSS if the wrapper cannot get fds\n' % (msg, name))
            sys.exit(0)
        sys.stderr.write(msg + '\n')
        sys.exit(1)
    if not reply.get('ok'):
        err = reply.get('error', {})
        sys.stderr.write('virt-ebpf: broker: %s (%s); %s\n' % (err.get('message'), err.get('code'), err.get('remedy')))
        sys.exit(1 if event == 'prepare' else 0)
    sys.stdout.write(reply['stdout'])
    sys.stderr.write(reply['stderr'])
    sys.exit(reply['code'])


main()
