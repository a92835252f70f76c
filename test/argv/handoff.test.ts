/**
 * The kinds table (src/argv/handoff.ts) drives every planner: a second kind — here AF_XDP's
 * `sock-fds` on an `af-xdp` netdev (seed 004), as a table entry only — is found on the command
 * line and in a QMP `netdev_add`, gets its own property written in its own option's syntax, and
 * RSS devices beside it are planned exactly as without it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findHandoffDevices, HANDOFFS, handoffKind, planDeviceAdd, RSS_HANDOFF, type HandoffKind } from '../../src/argv';
import { finalArgv, planDevices } from '../../src/exec/plan';
import { refusal } from '../../src/broker/server';

const XDP: HandoffKind = {
  kind: 'af-xdp',
  option: '-netdev',
  qmpCommand: 'netdev_add',
  marker: 'af-xdp',
  fdsPerContext: 1,
  properties: [{ name: 'sock-fds', type: 'string', qomTypes: ['str'] }],
  wants: (type) => type === 'af-xdp',
};
const KINDS = [...HANDOFFS, XDP];

const ARGV = [
  '-netdev', 'af-xdp,id=x0,ifname=eth1,queues=2',
  '-device', '{"driver":"virtio-net-pci","netdev":"x0","id":"net0","mq":true}',
  '-netdev', '{"type":"tap","id":"t1","fd":"30"}',
  '-device', '{"driver":"virtio-net-pci","netdev":"t1","id":"net1","mq":true,"rss":true}',
  '-netdev', '{"type":"af-xdp","id":"x2","ifname":"eth2","sock-fds":"40"}',
];

test('the table has RSS under its name, and nothing else by default', () => {
  assert.equal(handoffKind('rss'), RSS_HANDOFF);
  assert.deepEqual(HANDOFFS.map((k) => k.kind), ['rss']);
  assert.throws(() => handoffKind('nope'));
});

test('a second kind is found on the command line in order, each with its own kind; one that names its fds is skipped', () => {
  const found = findHandoffDevices(ARGV, KINDS);
  assert.deepEqual(found.map((d) => `${d.id}:${d.kind.kind}:${d.hasFds}`), ['x0:af-xdp:false', 'net1:rss:false', 'x2:af-xdp:true']);
  // Without the entry, only RSS: the planners know no kind but the table's.
  assert.deepEqual(findHandoffDevices(ARGV).map((d) => d.id), ['net1']);
});

test('finalArgv writes each kind\'s property in its option\'s syntax and keeps its fds', () => {
  const plan = planDevices(ARGV, KINDS);
  assert.deepEqual(plan.devices.map((d) => d.id), ['x0', 'net1']);
  const { argv, keep } = finalArgv(
    ARGV,
    plan,
    [
      { fds: [50], prop: { name: 'sock-fds', type: 'string' } },
      { fds: [51, 52, 53, 54], prop: { name: 'ebpf-rss-fds', type: 'list' } },
    ],
    {},
  );
  assert.equal(argv[1], 'af-xdp,id=x0,ifname=eth1,queues=2,sock-fds=50', 'the netdev keeps its implied type key');
  assert.deepEqual(JSON.parse(argv[7])['ebpf-rss-fds'], ['51', '52', '53', '54']);
  assert.deepEqual([argv[3], argv[5], argv[9]], [ARGV[3], ARGV[5], ARGV[9]]);
  assert.deepEqual(keep, [0, 1, 2, 30, 40, 50, 51, 52, 53, 54]);
});

test('a netdev_add of the second kind is planned where its fds go; a device_add with rss as without it', () => {
  const line = Buffer.from(JSON.stringify({ execute: 'netdev_add', arguments: { type: 'af-xdp', id: 'x9', ifname: 'eth3' }, id: 4 }));
  const p = planDeviceAdd(line, 'off', KINDS)!;
  assert.equal(p.kind, XDP);
  const spliced = Buffer.concat([line.subarray(0, p.at), Buffer.from('"sock-fds":"7",'), line.subarray(p.at)]);
  assert.deepEqual(JSON.parse(spliced.toString()).arguments, { 'sock-fds': '7', type: 'af-xdp', id: 'x9', ifname: 'eth3' });
  assert.equal(planDeviceAdd(line), null, 'without the entry a netdev_add is nothing of ours');
  const rss = Buffer.from(JSON.stringify({ execute: 'device_add', arguments: { driver: 'virtio-net-pci', rss: true, id: 'n' } }));
  assert.equal(planDeviceAdd(rss, 'off', KINDS)!.kind, RSS_HANDOFF);
  assert.deepEqual({ ...planDeviceAdd(rss, 'off', KINDS)!, kind: null }, { ...planDeviceAdd(rss)!, kind: null });
  const named = Buffer.from(JSON.stringify({ execute: 'netdev_add', arguments: { type: 'af-xdp', id: 'x9', 'sock-fds': '3' } }));
  assert.equal(planDeviceAdd(named, 'off', KINDS), null, 'one that names its fds is left alone');
});

test('a refusal names the kind\'s own property, as many times as its context has fds', () => {
  assert.equal(refusal('no: why', XDP), '"sock-fds":"no\ua789 why",', 'a string property keeps one name whole');
  assert.equal(refusal('no'), `"ebpf-rss-fds":[${Array(4).fill('"no"').join(',')}],`);
});
