/**
 * status and verify against real QEMU 10.0.2 processes without a guest: one started by
 * `virt-ebpf exec` as libvirt-qemu with our eBPF fds, one run directly as libvirt-qemu with
 * rss=on (no way to eBPF), one run as root (QEMU loads its own program). Maps are written by id
 * the way QEMU would after a guest's `ethtool -X`, then read back through status and checked
 * through verify.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { mapUpdate, openMapById, loadRss } from '../../src/bpf';
import { encodeRssConfig, HASH_TYPES_LINUX_DEFAULT, keyToMapValue, MS_RSS_KEY } from '../../src/rss';
import { collectStatus, runStatus, type StatusDocument, type StatusReport } from '../../src/status';
import { formatVerification, runVerify, verifyProgram } from '../../src/verify';
import { isVirtEbpfError } from '../../src/errors';
import { getfd, QmpClient } from '../../src/qmp';
import { lookupUser } from '../../src/sys/users';
import { needRoot, tempDir, watchFds } from '../harness';
import { rssObject } from '../bpf/fixture';
import { CLI, cli, fdinfoIds, QEMU_USER, startQemu, type TestQemu } from './qemu';
import { parseExposition, type PromFamily } from './prom';
import { schemaViolations } from './schema';

let execd: TestQemu;
let checkFds: () => void;
const started: TestQemu[] = [];

before(async () => {
  needRoot('starts QEMU as libvirt-qemu and as root, reads BPF maps by id');
  checkFds = watchFds();
  const t0 = performance.now();
  execd = await startQemu('exec');
  started.push(execd);
  console.log(`# QEMU via virt-ebpf exec (-S) up in ${Math.round(performance.now() - t0)} ms`);
});

after(async () => {
  for (const q of started) await q.stop();
  checkFds?.();
});

function deviceFds(q: TestQemu): number[] {
  const dev = q.argv.find((a, i) => q.argv[i - 1] === '-device' && a.includes('ebpf-rss-fds'));
  assert.ok(dev, `no ebpf-rss-fds in ${q.argv.join(' ')}`);
  return (JSON.parse(dev) as { 'ebpf-rss-fds': string[] })['ebpf-rss-fds'].map(Number);
}

test('status finds the exec-started QEMU: the NIC, its fds, ids equal to QEMU\'s fdinfo, not configured yet', async () => {
  const t0 = performance.now();
  const report = collectStatus(String(execd.pid));
  const ms = Math.round(performance.now() - t0);
  assert.equal(report.domains.length, 1);
  const d = report.domains[0];
  assert.deepEqual([d.pid, d.name, d.uuid, d.uid, d.user], [execd.pid, execd.name, execd.uuid, lookupUser(QEMU_USER).uid, QEMU_USER]);
  assert.equal(d.nics.length, 1);
  const nic = d.nics[0];
  assert.deepEqual([nic.id, nic.netdev, nic.mac, nic.tap, nic.queues, nic.vhost], ['net0', 'hostnet0', execd.mac, execd.tap.name, 4, false]);
  const fds = deviceFds(execd);
  assert.deepEqual(
    fds.map((fd) => readlinkSync(`/proc/${execd.pid}/fd/${fd}`)),
    ['anon_inode:bpf-prog', 'anon_inode:bpf-map', 'anon_inode:bpf-map', 'anon_inode:bpf-map'],
  );
  const ids = fdinfoIds(execd.pid, fds);
  assert.deepEqual(nic.ebpf, { source: 'fd-numbers', matchedBy: 'command-line', fds, progId: ids[0], mapIds: ids.slice(1) });
  assert.equal(nic.state, 'unconfigured');
  assert.deepEqual(nic.rss?.table, [], 'indirections_len 0: no entries in use');
  assert.equal(nic.rss?.key, '0'.repeat(80));
  assert.deepEqual(nic.problems, []);

  const text = await runStatus([execd.name]);
  assert.equal(text.code, 0);
  assert.match(text.stdout, new RegExp(`^${execd.name}  \\(uuid ${execd.uuid}, pid ${execd.pid}, user ${QEMU_USER}\\)$`, 'm'));
  assert.match(text.stdout, new RegExp(`eBPF   prog ${ids[0]}  maps ${ids.slice(1).join(' ')}  via ebpf-rss-fds ${fds.join(',')}`));
  assert.match(text.stdout, /RSS {4}not configured yet: no RSS configuration reached the maps/);
  console.log(`# status for one QEMU: ${ms} ms`);
});

const TABLE = Array.from({ length: 128 }, (_, i) => [0, 1, 2, 3, 0, 1, 2, 0][i % 8]);

function writeRss(mapIds: readonly number[], table: readonly number[]): void {
  const [c, k, t] = mapIds.map((id) => openMapById(id));
  try {
    mapUpdate(c.fd, 0, encodeRssConfig({ redirect: true, populateHash: false, hashTypes: HASH_TYPES_LINUX_DEFAULT, indirectionsLen: table.length, defaultQueue: 0 }));
    mapUpdate(k.fd, 0, keyToMapValue(MS_RSS_KEY));
    table.forEach((q, i) => {
      const v = Buffer.alloc(2);
      v.writeUInt16LE(q);
      mapUpdate(t.fd, i, v);
    });
  } finally {
    [c, k, t].forEach((f) => f.close());
  }
}

test('values written into the maps by id show in status (text and --json), and verify agrees 256/256', async () => {
  const nic0 = collectStatus(String(execd.pid)).domains[0].nics[0];
  writeRss(nic0.ebpf!.mapIds, TABLE);

  const json = await cli(['status', String(execd.pid), '--json']);
  assert.equal(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout) as StatusReport;
  const nic = report.domains[0].nics[0];
  assert.equal(nic.state, 'active');
  assert.deepEqual(nic.rss, {
    redirect: true,
    populateHash: false,
    hashTypes: 0x3f,
    hashTypeNames: ['IPv4', 'TCPv4', 'UDPv4', 'IPv6', 'TCPv6', 'UDPv6'],
    indirectionsLen: 128,
    defaultQueue: 0,
    key: MS_RSS_KEY.toString('hex'),
    table: TABLE,
  });
  assert.deepEqual(nic.histogram!.map((h) => h.entries), [48, 32, 32, 16]);

  const text = await runStatus([execd.uuid]);
  assert.match(text.stdout, /RSS {4}on: 128 table entries, default queue 0, hash IPv4 TCPv4 UDPv4 IPv6 TCPv6 UDPv6 \(0x3f\)/);
  assert.match(text.stdout, new RegExp(`key {4}${MS_RSS_KEY.toString('hex')}`));
  assert.match(text.stdout, /table {2}q0 █{12} +48 \(37\.5%\)\n +q1 █{8} +32 \(25%\)\n +q2 █{8} +32 \(25%\)\n +q3 █{4} +16 \(12\.5%\)/);

  const t0 = performance.now();
  const v = await runVerify([execd.name, '--flows', '256']);
  const ms = Math.round(performance.now() - t0);
  assert.equal(v.code, 0, v.stdout);
  assert.match(v.stdout, new RegExp(`^${execd.name} net0 \\(prog ${nic.ebpf!.progId}, seed 1, \\d+ ms\\): 256/256 flows agree with the reference$`, 'm'));
  const perQueue = [...v.stdout.matchAll(/^ {4}q(\d) .*?(\d+) \| +(\d+)$/gm)].map((m) => [Number(m[2]), Number(m[3])]);
  assert.equal(perQueue.length, 4);
  for (const [live, ref] of perQueue) {
    assert.equal(live, ref);
    assert.ok(live > 0, 'every queue of the table gets flows');
  }
  console.log(`# verify 256 flows on a live QEMU NIC: ${ms} ms`);

  // The CLI wiring, and a different seed still agrees.
  const viaCli = await cli(['verify', execd.name, '--flows', '64', '--seed', '99', '--json']);
  assert.equal(viaCli.code, 0, viaCli.stderr);
  const [r] = JSON.parse(viaCli.stdout) as Array<{ passed: boolean; agreed: number; total: number; seed: number }>;
  assert.deepEqual([r.passed, r.agreed, r.total, r.seed], [true, 64, 64, 99]);
});

test('verify catches a disagreement: the live program judged against other maps fails, naming the flows', async () => {
  const nic = collectStatus(String(execd.pid)).domains[0].nics[0];
  // A context of our own with a different table: the reference reads it, QEMU's program does not.
  const other = loadRss(await rssObject());
  try {
    writeRss(other.mapIds, Array.from({ length: 128 }, (_, i) => (i + 1) % 4));
    const v = verifyProgram({ progId: nic.ebpf!.progId, mapIds: other.mapIds as [number, number, number], queues: 4 }, (await import('../../src/verify')).generateFlows(64, 3));
    assert.ok(v.agreed < 64, `expected disagreements, got ${v.agreed}/64`);
    const text = formatVerification({ ...v, domain: { pid: execd.pid, name: execd.name }, nic: { id: 'net0', queues: 4 }, seed: 3 });
    assert.match(text, /flows DISAGREE with the reference/);
    assert.match(text, /≠ (tcp|udp|ip)[46] .*: live q\d, reference q\d \(.*hash 0x[0-9a-f]{8}, entry \d+\)/);
  } finally {
    other.close();
  }
});

test('a NIC that asked for RSS but has no eBPF is flagged with why; verify refuses it', async () => {
  const q = await startQemu('user');
  started.push(q);
  const nic = collectStatus(q.name).domains[0].nics[0];
  assert.equal(nic.state, 'no-ebpf');
  assert.equal(nic.ebpf, undefined);
  assert.match(nic.summary, /^asked for RSS but runs without eBPF: QEMU runs as uid \d+ without CAP_BPF and was given no ebpf-rss-fds; QEMU then steers in software$/);
  const text = await runStatus([q.name]);
  assert.match(text.stdout, /RSS {4}asked for RSS but runs without eBPF/);
  await assert.rejects(runVerify([q.name]), (e) => isVirtEbpfError(e, 'NIC_NO_EBPF') && /without CAP_BPF/.test(e.message));
  const viaCli = await cli(['verify', q.name]);
  assert.equal(viaCli.code, 1);
  assert.match(viaCli.stderr.trim(), /^virt-ebpf: NIC net0 of domain .* has no eBPF steering program to verify: .* \(NIC_NO_EBPF\); /);
  await q.stop();
});

test('a root QEMU that loaded its own program is tied to its NIC through its fds, and verifies', async () => {
  const q = await startQemu('root');
  started.push(q);
  const nic = collectStatus(String(q.pid)).domains[0].nics[0];
  // An fd QEMU closes between the listing and the look (a transient one of its own) is not a program.
  const linkOf = (fd: number): string => {
    try {
      return readlinkSync(`/proc/${q.pid}/fd/${fd}`);
    } catch {
      return '';
    }
  };
  const progFds = (await import('node:fs')).readdirSync(`/proc/${q.pid}/fd`).map(Number).filter((fd) => linkOf(fd) === 'anon_inode:bpf-prog');
  assert.equal(progFds.length, 1, 'QEMU 10 loads its RSS program at realize when it may');
  assert.equal(nic.ebpf?.source, 'self-loaded');
  assert.equal(nic.ebpf?.matchedBy, 'only-candidate');
  assert.equal(nic.ebpf?.progId, fdinfoIds(q.pid, progFds)[0]);
  assert.equal(nic.state, 'unconfigured');
  writeRss(nic.ebpf!.mapIds, TABLE);
  const v = await runVerify([String(q.pid), '--flows', '128']);
  assert.equal(v.code, 0, v.stdout);
  assert.match(v.stdout, /128\/128 flows agree/);
  assert.match((await runStatus([String(q.pid)])).stdout, /via loaded by QEMU itself \(its only RSS program\)/);
  await q.stop();
});

test('a NIC hot-plugged over QMP (getfd names) is not on the command line: status shows it through its program, verify checks it', async () => {
  const q = await startQemu('root', { rssNic: false, extraArgs: ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1'] });
  started.push(q);
  assert.equal(collectStatus().domains.some((d) => d.pid === q.pid), false, 'no RSS NIC yet: not listed');
  const ctx = loadRss(await rssObject());
  const progId = ctx.progId;
  const names = ['vebpf-prog', 'vebpf-cfg', 'vebpf-key', 'vebpf-tab'];
  const qmp = await QmpClient.connect(q.qmpPath, { timeoutMs: 5000 });
  try {
    for (const [i, n] of names.entries()) await getfd(qmp, n, ctx.fds[i].fd);
    await qmp.execute('netdev_add', { type: 'tap', id: 'hot0', ifname: q.tap.name, script: 'no', downscript: 'no', vhost: false, queues: 4 });
    await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'hotnic', netdev: 'hot0', bus: 'rp1', mq: true, vectors: 10, rss: true, 'ebpf-rss-fds': names });
  } finally {
    qmp.close();
    ctx.close(); // QEMU holds its own copies now
  }
  const d = collectStatus(String(q.pid)).domains[0];
  assert.equal(d.nics.length, 1);
  const nic = d.nics[0];
  assert.equal(nic.origin, 'unnamed-program');
  assert.deepEqual([nic.ebpf?.source, nic.ebpf?.matchedBy, nic.ebpf?.progId, nic.state], ['unnamed', 'none', progId, 'unconfigured']);
  writeRss(nic.ebpf!.mapIds, TABLE);
  const text = await runStatus([String(q.pid)]);
  assert.match(text.stdout, /^ {2}\(a NIC not on the command line: hot-plugged\?\)$/m);
  assert.match(text.stdout, new RegExp(`eBPF   prog ${progId} .* named on no command-line NIC`));
  const v = await runVerify([String(q.pid), '--nic', `prog:${progId}`, '--flows', '64']);
  assert.equal(v.code, 0, v.stdout);
  assert.match(v.stdout, new RegExp(`prog:${progId} \\(prog ${progId}, .*64/64 flows agree`));
  await q.stop();
});

test('unknown domain and unknown NIC are one-line errors with a remedy', async () => {
  await assert.rejects(runStatus(['no-such-domain-xyz']), (e) => isVirtEbpfError(e, 'DOMAIN_NOT_FOUND'));
  await assert.rejects(runVerify([execd.name, '--nic', 'net9']), (e) => isVirtEbpfError(e, 'NIC_NOT_FOUND') && /it has net0/.test(e.message));
  await assert.rejects(runVerify([execd.name, '--flows', '0']), (e) => isVirtEbpfError(e, 'USAGE'));
  const r = await cli(['status', 'no-such-domain-xyz']);
  assert.equal(r.code, 1);
  assert.match(r.stderr.trim(), /^virt-ebpf: no running QEMU with an RSS NIC belongs to domain "no-such-domain-xyz" .*\(DOMAIN_NOT_FOUND\); name a running domain/);
  const nobody = await cli(['status'], { uid: 65534 });
  assert.equal(nobody.code, 1);
  assert.match(nobody.stderr.trim(), /^virt-ebpf: status reads other processes' fds and BPF maps by id, which needs root \(NOT_ROOT\); run it as root/);
  // by MAC and by tap name too
  assert.equal((await runVerify([execd.name, '--nic', execd.mac.toUpperCase(), '--flows', '8'])).code, 0);
  assert.equal((await runVerify([execd.name, '--nic', execd.tap.name, '--flows', '8'])).code, 0);
});

/** docs/status-schema.md's digest, built here from what was written into the maps (not from status's reading of them). */
function documentedDigest(table: readonly number[], defaultQueue: number): string {
  const text = ['virt-ebpf.rss/v1', 'redirect=1', 'populate_hash=0', `hash_types=${HASH_TYPES_LINUX_DEFAULT}`, `indirections_len=${table.length}`, `default_queue=${defaultQueue}`, `key=${MS_RSS_KEY.toString('hex')}`, `table=${table.join(',')}`, ''].join('\n');
  return `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

/** The samples of `name` for the exec-started QEMU's NIC net0. */
function net0(fams: Map<string, PromFamily>, name: string): Array<{ labels: Record<string, string>; value: number }> {
  const f = fams.get(name);
  assert.ok(f, `no family ${name}`);
  return f.samples.filter((x) => x.labels.uuid === execd.uuid && x.labels.nic === 'net0');
}

test('fleet view: --json and --prometheus agree with each other and with the kernel on MAC, digest, program and map ids; the textfile recipe works', async () => {
  const fds = deviceFds(execd);
  const ids = fdinfoIds(execd.pid, fds);
  writeRss(ids.slice(1), TABLE);

  const json = await cli(['status', execd.name, '--json']);
  assert.equal(json.code, 0, json.stderr);
  const doc = JSON.parse(json.stdout) as StatusDocument;
  assert.deepEqual(schemaViolations(doc), [], 'a real document conforms to the schema');
  assert.equal(doc.host.name, hostname());
  assert.ok(Math.abs(Date.parse(doc.collectedAt) - Date.now()) < 60_000, doc.collectedAt);
  const nic = doc.domains[0].nics[0];
  assert.deepEqual([doc.domains[0].uuid, nic.mac, nic.ebpf?.progId, nic.ebpf?.mapIds], [execd.uuid, execd.mac, ids[0], ids.slice(1)]);
  assert.equal(nic.tableDigest, documentedDigest(TABLE, 0));

  const prom = await cli(['status', execd.name, '--prometheus']);
  assert.equal(prom.code, 0, prom.stderr);
  const fams = parseExposition(prom.stdout);
  assert.deepEqual(
    net0(fams, 'virt_ebpf_nic_info').map((x) => [x.labels.domain, x.labels.mac, x.labels.tap, x.labels.host]),
    [[execd.name, execd.mac, execd.tap.name, hostname()]],
  );
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_program_id').map((x) => x.value), [ids[0]]);
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_map_id').map((x) => [x.labels.map, x.value]), [['config', ids[1]], ['key', ids[2]], ['table', ids[3]]]);
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_table_digest_info').map((x) => x.labels.digest), [nic.tableDigest]);
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_table_entries').map((x) => x.value), nic.histogram!.map((h) => h.entries));
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_steering').filter((x) => x.value === 1).map((x) => x.labels.kind), [nic.steering!.kind]);
  assert.deepEqual(net0(fams, 'virt_ebpf_nic_rss_state').filter((x) => x.value === 1).map((x) => x.labels.state), ['active']);
  const info = fams.get('virt_ebpf_status_info')!.samples[0].labels;
  assert.deepEqual([info.schema, info.host, info.host_uuid, info.host_uuid_source], [doc.schema, doc.host.name, doc.host.uuid ?? '', doc.host.uuidSource ?? '']);

  // The guest changes one entry: both outputs follow the kernel.
  const changed = TABLE.map((q, i) => (i === 5 ? 3 : q));
  writeRss(ids.slice(1), changed);
  const after = JSON.parse((await cli(['status', execd.name, '--json', '--sample', '0'])).stdout) as StatusDocument;
  assert.equal(after.domains[0].nics[0].tableDigest, documentedDigest(changed, 0));
  assert.notEqual(after.domains[0].nics[0].tableDigest, nic.tableDigest);

  // The textfile collector recipe from docs/status-schema.md, with this build's CLI.
  const dir = tempDir('virt-ebpf-textfile-');
  try {
    const cmd = `"$0" "$1" status --prometheus --sample 0 > "$2/virt-ebpf.prom.$$" && mv "$2/virt-ebpf.prom.$$" "$2/virt-ebpf.prom"`;
    execFileSync('sh', ['-c', cmd, process.execPath, CLI, dir.path]);
    const published = parseExposition(readFileSync(join(dir.path, 'virt-ebpf.prom'), 'utf8'));
    assert.deepEqual(net0(published, 'virt_ebpf_nic_table_digest_info').map((x) => x.labels.digest), [after.domains[0].nics[0].tableDigest]);
  } finally {
    dir.remove();
  }
});
