/**
 * Fds in a message its peer has not read are still the sender's in the kernel's count (root's,
 * for the broker), and closing the broker's end does not take them back. A QEMU-account process
 * that asks for fds and never reads them would otherwise park them there without limit, until
 * root's count made every send of fds fail for every domain. Real broker, real BPF loads, a real
 * peer process as libvirt-qemu whose command line names its domain.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { lookupUser } from '../../src/sys/users';
import { gone, QEMU, needRoot, tempDir } from '../harness';
import { startTestBroker, type TestBroker } from '../broker/support';

const dir = tempDir('virt-ebpf-unread-');
const stateDir = join(dir.path, 'domains');
const qemuUser = lookupUser('libvirt-qemu');
const WRITE_TIMEOUT_MS = 300;
let broker: TestBroker;

before(async () => {
  needRoot('the broker loads BPF; the peer runs as libvirt-qemu');
  mkdirSync(stateDir, { recursive: true });
  broker = await startTestBroker({ pool: { size: 2 }, limits: { writeTimeoutMs: WRITE_TIMEOUT_MS } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
});

after(async () => {
  await broker?.close();
  dir.remove();
});

/**
 * A peer that sends a device-plan on each of `plans` connections: 'park' leaves the reply
 * unread with the connection open, 'read' reads it. Prints one JSON line per read reply: the
 * reply and how many fds came with it.
 */
/** Python: connect and send one request line; read one reply line and print it with its fd count. */
const PY_ASK = `
import json, select, socket, sys, time
def send(path, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(request.encode() + b'\\n')
    return s
def read_reply(s):
    data, fds = b'', []
    while not data.endswith(b'\\n'):
        d, f, _, _ = socket.recv_fds(s, 65536, 64)
        if not d:
            break
        data += d
        fds += f
    print(json.dumps({'reply': json.loads(data), 'fds': len(fds)}), flush=True)
`;

const PEER = `${PY_ASK}
path, request, plans = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kept = []
for what in plans:
    s = send(path, request)
    if what == 'park':
        kept.append(s)
        time.sleep(float(sys.argv[4]))
        continue
    read_reply(s)
    s.close()
`;

/** Run a python script as libvirt-qemu with these arguments, then `-uuid uuid` (the broker binds it to that domain); its stdout. */
async function asQemu(script: string, args: string[], uuid: string): Promise<string> {
  const child = spawn('setpriv', ['--reuid', String(qemuUser.uid), '--regid', String(qemuUser.gid), '--clear-groups', '/usr/bin/python3', '-c', script, broker.socket, ...args, '-uuid', uuid], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((r) => child.once('close', r));
  await gone(child);
  assert.equal(code, 0, `the peer failed: ${err.trim()}`);
  return out;
}

const LINE = JSON.stringify({ execute: 'device_add', arguments: { driver: 'virtio-net-pci', rss: true, netdev: 'hn1', id: 'n1' } });
const DEVICE_PLAN = JSON.stringify({ v: 1, id: 1, op: 'device-plan', emulator: QEMU, line64: Buffer.from(LINE).toString('base64') });

async function runPeer(uuid: string, plans: Array<'park' | 'read'>, parkSeconds: number): Promise<Array<{ reply: Record<string, unknown>; fds: number }>> {
  const out = await asQemu(PEER, [DEVICE_PLAN, JSON.stringify(plans), String(parkSeconds)], uuid);
  return out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

function domain(): string {
  const uuid = randomUUID();
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name: `u-${uuid.slice(0, 8)}`, uuid, policy: 'strict', hotplug: true }));
  return uuid;
}

test('a peer that reads its replies gets fds for each of its device-plans', async () => {
  const got = await runPeer(domain(), ['read', 'read', 'read'], 0);
  assert.deepEqual(got.map((g) => g.fds), [4, 4, 4]);
});

test('a process that leaves a reply with fds unread past writeTimeoutMs gets no more fds for its life', async () => {
  const got = await runPeer(domain(), ['park', 'read', 'read'], (WRITE_TIMEOUT_MS + 1_500) / 1000);
  assert.equal(got.length, 2);
  for (const g of got) {
    assert.equal(g.fds, 0, 'no fds after the unread ones');
    assert.match(String(g.reply.say), /left eBPF fds the broker sent it unread; it gets no more/);
  }
  // Another domain's process is served as before.
  assert.deepEqual((await runPeer(domain(), ['read'], 0)).map((g) => g.fds), [4]);
});

test('a process that shuts its writing side (not its socket) with a reply with fds unread is caught too', async () => {
  // The peer's EOF makes node end and close our side by itself; the fds stay in the peer's queue.
  const script = `${PY_ASK}
s = send(sys.argv[1], sys.argv[2])
select.select([s], [], [], 10)  # the reply is there
s.shutdown(socket.SHUT_WR)
time.sleep(1)
read_reply(send(sys.argv[1], sys.argv[2]))
`;
  const got = JSON.parse((await asQemu(script, [DEVICE_PLAN], domain())).trim());
  assert.equal(got.fds, 0, 'no fds after the ones left unread');
  assert.match(String(got.reply.say), /left eBPF fds the broker sent it unread/);
});

test('a second reply with fds waits until the first is read: a peer that never reads parks one, not one per request', async () => {
  // Two requests on one connection, nothing read: the first reply's fds go, the second's wait.
  const script = `
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(((sys.argv[2] + '\\n') * 2).encode())
time.sleep(${(WRITE_TIMEOUT_MS + 1_500) / 1000})
data, fds = b'', []
while True:
    d, f, _, _ = socket.recv_fds(s, 65536, 64)
    if not d:
        break
    data += d
    fds += f
print(json.dumps({'lines': data.count(b'\\n'), 'fds': len(fds)}), flush=True)
`;
  const out = await asQemu(script, [DEVICE_PLAN], domain());
  const got = JSON.parse(out.trim());
  assert.deepEqual(got, { lines: 1, fds: 4 }, 'one reply with its fds was sent; the second was not, and the connection was closed');
});
