# virt-ebpf libvirt hook shim for `prepare begin` and `release end`: `python3 -I -S hook.py NAME
# OP SUBOP EXTRA`, root, domain XML on stdin. The hook's logic runs inside the broker (the `hook`
# op of src/broker/server.ts, src/hook/main.ts runHook); this only forwards the XML and relays
# the answer, so `virsh start` does not wait for a Node start-up here.
# Start-up time is the point of this file: it imports only C modules and brokercall.py.
import os
import sys

sys.path.insert(0, __file__.rsplit('/', 1)[0])  # -I leaves the script's own directory out
sys.dont_write_bytecode = True  # never leave __pycache__ in the installed (root-owned) prefix
from brokercall import REMEDY, SOCKET, Refused, call, dumps  # noqa: E402

STATE_DIR = os.environ.get('VIRT_EBPF_DOMAIN_STATE_DIR', '/run/virt-ebpf/domains')
HOOK_TIMEOUT_S = 30  # bounded: a hook that hangs would hang libvirt's start


def between(text, start, end, at=0):
    """The text between the first `start` from `at` and the next `end`, or None."""
    i = text.find(start, at)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j] if j >= 0 else None


def config_attr(xml, name, allowed, default):
    """An attribute of our `<virt-ebpf:config …>` element (src/xml writes it); absent or odd: default."""
    tag = between(xml, '<virt-ebpf:config', '>') or ''
    for q in '"\'':
        v = between(tag, ' %s=%s' % (name, q), q)
        if v in allowed:
            return v
    return default


def xml_policy(xml):
    """policy="…" of the domain; absent: strict."""
    return config_attr(xml, 'policy', ('strict', 'fallback'), 'strict')


def state_path(xml):
    uuid = (between(xml, '<uuid>', '</uuid>', max(xml.find('<domain'), 0)) or '').strip()
    ok = len(uuid) == 36 and all(c in '0123456789abcdefABCDEF-' for c in uuid)
    return os.path.join(STATE_DIR, uuid.lower() + '.json') if ok else None


def remember(name, xml, policy):
    """What runHook writes at prepare: the wrapper reads the domain's policy and hotplug from it."""
    path = state_path(xml)
    if not path:
        return
    uuid = os.path.basename(path)[:-5]
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 'w') as f:
        hotplug = config_attr(xml, 'hotplug', ('on', 'off'), 'on') == 'on'
        f.write(dumps({'name': name, 'uuid': uuid, 'policy': policy, 'hotplug': hotplug}) + '\n')


def forget(xml):
    path = state_path(xml)
    if path and os.path.exists(path):
        os.unlink(path)


def main():
    name, op = sys.argv[1], sys.argv[2]
    event = 'prepare' if op == 'prepare' else 'release'
    xml = sys.stdin.read()
    try:
        reply, _ = call({'v': 1, 'id': 1, 'op': 'hook', 'event': event, 'name': name, 'xml': xml}, HOOK_TIMEOUT_S)
    except (Refused, ValueError, StopIteration) as e:  # StopIteration: _json on a broken reply
        if isinstance(e, Refused) and not e.unreachable:  # the broker answered: it said no
            sys.stderr.write('virt-ebpf: %s\n' % e)
            sys.exit(1 if event == 'prepare' else 0)
        if event == 'release':
            forget(xml)
            sys.exit(0)  # the broker drops unclaimed contexts itself when it restarts
        why = str(e) if isinstance(e, Refused) else 'cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, e, REMEDY)
        msg = 'virt-ebpf: ' + why
        policy = xml_policy(xml)
        remember(name, xml, policy)
        if policy == 'fallback':
            sys.stderr.write('%s\nvirt-ebpf: policy is fallback: %s starts without eBPF RSS if the wrapper cannot get fds\n' % (msg, name))
            sys.exit(0)
        sys.stderr.write(msg + '\n')
        sys.exit(1)
    sys.stdout.write(reply['stdout'])
    sys.stderr.write(reply['stderr'])
    sys.exit(reply['code'])


main()
