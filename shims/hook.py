# virt-ebpf libvirt hook shim for `prepare begin` and `release end`: `python3 -I -S hook.py NAME
# OP SUBOP EXTRA`, root, domain XML on stdin. The hook's logic runs inside the broker (the `hook`
# op of src/broker/server.ts, src/hook/main.ts runHook); this only forwards the XML and relays
# the answer, so `virsh start` does not wait for a Node start-up here.
import json
import os
import re
import socket
import sys

SOCKET = os.environ.get('VIRT_EBPF_BROKER_SOCKET', '/run/virt-ebpf/broker.sock')
REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`'
STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')
UUID = re.compile(r'<domain\b[\s\S]*?<uuid>\s*([0-9a-fA-F-]{36})\s*</uuid>')
# policy="…" on our namespace's config element (src/xml writes `<virt-ebpf:config … policy="…">`).
POLICY = re.compile(r'<virt-ebpf:config\b[^>]*?\bpolicy=["\'](strict|fallback)["\']')


def ask(event, name, xml):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)  # bounded: a hook that hangs would hang libvirt's start
    try:
        s.connect(SOCKET)
        s.sendall(json.dumps({'v': 1, 'id': 1, 'op': 'hook', 'event': event, 'name': name, 'xml': xml}).encode() + b'\n')
        buf = b''
        while b'\n' not in buf:
            data = s.recv(1 << 20)
            if not data:
                raise OSError('the broker closed the connection without a reply')
            buf += data
    finally:
        s.close()
    return json.loads(buf[:buf.index(b'\n')])


def state_path(xml):
    m = UUID.search(xml)
    return os.path.join(STATE_DIR, m.group(1).lower() + '.json') if m else None


def remember(name, xml, policy):
    """What runHook writes at prepare: the wrapper reads the domain's policy from it."""
    path = state_path(xml)
    if not path:
        return
    uuid = os.path.basename(path)[:-5]
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 'w') as f:
        f.write(json.dumps({'name': name, 'uuid': uuid, 'policy': policy}, separators=(',', ':')) + '\n')


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
    except (OSError, ValueError) as e:
        if event == 'release':
            forget(xml)
            sys.exit(0)  # the broker drops unclaimed contexts itself when it restarts
        why = 'no reply within 30000 ms' if isinstance(e, socket.timeout) else (getattr(e, 'strerror', None) or str(e))
        msg = 'virt-ebpf: cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, why, REMEDY)
        m = POLICY.search(xml)
        policy = m.group(1) if m else 'strict'
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
