/**
 * The fleet view, pure: the table digest as docs/status-schema.md defines it, the host UUID
 * decided as libvirtd decides it, the --json document against the documented schema, and the
 * --prometheus exposition read back by a strict parser (test/status/prom.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  decodeRssView,
  escapeLabelValue,
  hostUuidFrom,
  libvirtUuid,
  runStatus,
  statusDocument,
  statusJson,
  statusPrometheus,
  tableDigest,
  tableDigestInput,
  type HostFacts,
  type StatusDocument,
} from '../../src/status';
import { isVirtEbpfError } from '../../src/errors';
import { MS_RSS_KEY } from '../../src/rss';
import { decideSteering } from '../../src/steering';
import { EQUAL2, REPORT, ZERO } from './fixture';
import { parseExposition, type PromFamily } from './prom';
import { schemaViolations } from './schema';

const HOST: HostFacts = { name: 'hv1', uuid: '2b3c3f4e-7c6d-4f0a-9a51-6c3d2e1f0a9b', uuidSource: 'host_uuid' };
const AT = new Date('2026-12-03T12:00:00.250Z');
const DOC = statusDocument(REPORT, HOST, AT);

test('the table digest: sha256 of the documented text, recomputable with sha256sum', () => {
  const v = decodeRssView(EQUAL2);
  const input = tableDigestInput(v);
  assert.equal(
    input,
    [
      'virt-ebpf.rss/v1',
      'redirect=1',
      'populate_hash=0',
      'hash_types=63',
      'indirections_len=128',
      'default_queue=0',
      `key=${MS_RSS_KEY.toString('hex')}`,
      `table=${Array.from({ length: 128 }, (_, i) => i % 2).join(',')}`,
      '',
    ].join('\n'),
  );
  const sum = spawnSync('sha256sum', { input, encoding: 'utf8' });
  assert.equal(sum.status, 0, sum.stderr);
  assert.equal(tableDigest(v), `sha256:${sum.stdout.split(' ')[0]}`);
});

test('the table digest changes with every field it covers, and only with what is in use', () => {
  const v = decodeRssView(EQUAL2);
  const d = tableDigest(v);
  const variants = [
    { ...v, redirect: false },
    { ...v, populateHash: true },
    { ...v, hashTypes: 0x3e },
    { ...v, indirectionsLen: 64, table: v.table.slice(0, 64) },
    { ...v, defaultQueue: 1 },
    { ...v, key: 'ff' + v.key.slice(2) },
    { ...v, table: [1, ...v.table.slice(1)] },
  ];
  const digests = variants.map(tableDigest);
  assert.equal(new Set([d, ...digests]).size, variants.length + 1, 'each change gives a new digest');
  // Entries past indirections_len are not in the view, so two maps that differ only there agree.
  const tail = decodeRssView({ ...EQUAL2, config: Buffer.from('01003f00000008000000', 'hex'), table: [...EQUAL2.table.slice(0, 8), ...new Array(120).fill(3)] });
  assert.equal(tableDigest(tail), tableDigest(decodeRssView({ ...EQUAL2, config: Buffer.from('01003f00000008000000', 'hex') })));
  assert.match(tableDigest(decodeRssView(ZERO)), /^sha256:[0-9a-f]{64}$/, 'an unconfigured NIC has a digest too (all zero)');
});

test('the host UUID as libvirtd picks it: host_uuid, else host_uuid_source (smbios by default, or machine-id)', () => {
  const smbios = '4C4C4544-0034-3510-8052-B4C04F4E4332';
  assert.deepEqual(hostUuidFrom({ libvirtdConf: '#host_uuid = "00000000-0000-0000-0000-000000000000"\nhost_uuid = "7E43B05D-F9A6-4612-A5BC-0B6F29DE939C"\n', productUuid: smbios }), {
    uuid: '7e43b05d-f9a6-4612-a5bc-0b6f29de939c',
    uuidSource: 'host_uuid',
  });
  assert.deepEqual(hostUuidFrom({ libvirtdConf: '#host_uuid = "7e43b05d-f9a6-4612-a5bc-0b6f29de939c"\n', productUuid: `${smbios}\n` }), { uuid: smbios.toLowerCase(), uuidSource: 'smbios' });
  assert.deepEqual(hostUuidFrom({ libvirtdConf: 'host_uuid_source = "machine-id"\n', machineId: '3d1219c7c4c5404aaa1f6d2a48adfda4\n', productUuid: smbios }), {
    uuid: '3d1219c7-c4c5-404a-aa1f-6d2a48adfda4',
    uuidSource: 'machine-id',
  });
  const none = hostUuidFrom({});
  assert.deepEqual([none.uuid, none.uuidSource], [undefined, 'smbios']);
  assert.match(none.uuidProblem!, /no SMBIOS system UUID .*temporary one.*set host_uuid in libvirtd\.conf/);
  assert.match(hostUuidFrom({ productUuid: '00000000-0000-0000-0000-000000000000' }).uuidProblem!, /not valid/, 'libvirt rejects all-same-digit UUIDs');
  assert.match(hostUuidFrom({ libvirtdConf: 'host_uuid = "nope"' }).uuidProblem!, /host_uuid "nope" is not a UUID/);
  assert.match(hostUuidFrom({ libvirtdConf: 'host_uuid_source = "dmidecode"' }).uuidProblem!, /neither smbios nor machine-id/);
  assert.equal(libvirtUuid('11111111-1111-1111-1111-111111111111'), undefined);
  assert.equal(libvirtUuid('7e43b05d-f9a6-4612-a5bc-0b6f29de939'), undefined, 'one digit short');
});

test('--json: the document conforms to docs/status-schema.md v1, and the schema check can fail', () => {
  const doc = JSON.parse(statusJson(DOC)) as StatusDocument;
  assert.deepEqual(schemaViolations(doc), []);
  assert.deepEqual([doc.schema, doc.collectedAt, doc.host], ['virt-ebpf.status/v1', '2026-12-03T12:00:00.250Z', HOST]);
  assert.equal(doc.domains[0].nics[0].tableDigest, tableDigest(decodeRssView(EQUAL2)));
  assert.deepEqual(schemaViolations(statusDocument({ domains: [] }, { name: 'hv2', uuidSource: 'smbios', uuidProblem: 'x' }, AT)), []);
  // Each of these breaks a promise of the document.
  const nic0 = REPORT.domains[0].nics[0];
  const broken: Array<[string, unknown]> = [
    ['an undocumented field', { ...doc, extra: 1 }],
    ['another schema', { ...doc, schema: 'virt-ebpf.status/v2' }],
    ['a pid as a string', { ...doc, domains: [{ ...doc.domains[0], pid: '4242' }] }],
    ['an unknown steering kind', { ...doc, domains: [{ ...doc.domains[0], nics: [{ ...nic0, steering: { ...nic0.steering!, kind: 'magic' } }] }] }],
    ['rss without its digest', { ...doc, domains: [{ ...doc.domains[0], nics: [{ ...nic0, tableDigest: undefined }] }] }],
    ['two map ids', { ...doc, domains: [{ ...doc.domains[0], nics: [{ ...nic0, ebpf: { ...nic0.ebpf!, mapIds: [1, 2] } }] }] }],
    ['a host without uuid or why', { ...doc, host: { name: 'hv1' } }],
  ];
  for (const [what, bad] of broken) assert.notDeepEqual(schemaViolations(JSON.parse(JSON.stringify(bad))), [], what);
});

function family(fams: Map<string, PromFamily>, name: string): PromFamily {
  const f = fams.get(name);
  assert.ok(f, `family ${name} missing; have ${[...fams.keys()].join(' ')}`);
  assert.equal(f.type, 'gauge');
  assert.ok(f.help.length > 10, `${name} has a HELP text`);
  return f;
}

/** The one sample of `name` whose labels include `match`. */
function sample(fams: Map<string, PromFamily>, name: string, match: Record<string, string>): number {
  const hits = family(fams, name).samples.filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
  assert.equal(hits.length, 1, `${name} ${JSON.stringify(match)}: ${hits.length} samples`);
  return hits[0].value;
}

test('--prometheus: parses strictly, one family per fact, the same facts as --json', () => {
  const fams = parseExposition(statusPrometheus(DOC));
  assert.deepEqual(
    [...fams.keys()],
    [
      'virt_ebpf_status_info',
      'virt_ebpf_status_collected_timestamp_seconds',
      'virt_ebpf_domains',
      'virt_ebpf_domain_info',
      'virt_ebpf_nic_info',
      'virt_ebpf_nic_queues',
      'virt_ebpf_nic_steering',
      'virt_ebpf_nic_steering_confidence',
      'virt_ebpf_nic_rss_state',
      'virt_ebpf_nic_problems',
      'virt_ebpf_nic_program_id',
      'virt_ebpf_nic_map_id',
      'virt_ebpf_nic_table_digest_info',
      'virt_ebpf_nic_table_entries',
    ],
  );
  assert.deepEqual(family(fams, 'virt_ebpf_status_info').samples, [
    { name: 'virt_ebpf_status_info', labels: { schema: 'virt-ebpf.status/v1', host: 'hv1', host_uuid: HOST.uuid!, host_uuid_source: 'host_uuid' }, value: 1 },
  ]);
  assert.equal(sample(fams, 'virt_ebpf_status_collected_timestamp_seconds', {}), 1796299200.25);
  assert.equal(sample(fams, 'virt_ebpf_domains', {}), 1);
  const dom = { domain: 'vm1', uuid: '7e43b05d-f9a6-4612-a5bc-0b6f29de939c' };
  assert.equal(sample(fams, 'virt_ebpf_domain_info', { ...dom, pid: '4242', user: 'libvirt-qemu', emulator_version: '10.0.2' }), 1);
  const net0 = { ...dom, nic: 'net0' };
  assert.deepEqual(family(fams, 'virt_ebpf_nic_info').samples.map((s) => s.labels), [
    { ...net0, host: 'hv1', mac: '52:54:00:8d:c8:3b', tap: 'vnet0', netdev: 'hostnet0', rss: 'on', vhost: 'false', origin: 'command-line', rss_from: '' },
    { ...dom, nic: 'net1', host: 'hv1', mac: '52:54:00:8d:c8:3c', tap: '', netdev: '', rss: 'on', vhost: 'true', origin: 'command-line', rss_from: '' },
    { ...dom, nic: 'net2', host: 'hv1', mac: '52:54:00:8d:c8:3d', tap: 'vnet2', netdev: '', rss: 'off', vhost: 'false', origin: 'command-line', rss_from: '' },
  ]);
  const n0 = REPORT.domains[0].nics[0];
  assert.equal(sample(fams, 'virt_ebpf_nic_queues', net0), 2);
  assert.equal(sample(fams, 'virt_ebpf_nic_program_id', net0), n0.ebpf!.progId);
  assert.deepEqual(['config', 'key', 'table'].map((map) => sample(fams, 'virt_ebpf_nic_map_id', { ...net0, map })), n0.ebpf!.mapIds);
  assert.equal(sample(fams, 'virt_ebpf_nic_table_digest_info', { ...net0, digest: n0.tableDigest! }), 1);
  assert.deepEqual([0, 1].map((q) => sample(fams, 'virt_ebpf_nic_table_entries', { ...net0, queue: String(q) })), [64, 64]);
  // State sets: exactly one 1 per NIC, naming what --json says.
  for (const [name, label, nics] of [
    ['virt_ebpf_nic_steering', 'kind', ['net0', 'net2']],
    ['virt_ebpf_nic_steering_confidence', 'confidence', ['net0', 'net2']],
    ['virt_ebpf_nic_rss_state', 'state', ['net0', 'net1']],
  ] as const) {
    for (const nic of nics) {
      const on = family(fams, name).samples.filter((s) => s.labels.nic === nic && s.value === 1);
      assert.equal(on.length, 1, `${name} ${nic}`);
      const all = [...REPORT.domains[0].nics, ...REPORT.domains[0].plainNics];
      const j = all.find((n) => n.id === nic)!;
      const expected = label === 'state' ? (j as (typeof REPORT.domains)[0]['nics'][0]).state : label === 'kind' ? j.steering!.kind : j.steering!.confidence;
      assert.equal(on[0].labels[label], expected, `${name} ${nic}`);
      assert.ok(family(fams, name).samples.filter((s) => s.labels.nic === nic).every((s) => s.value === 0 || s.value === 1));
    }
  }
  assert.equal(family(fams, 'virt_ebpf_nic_steering').samples.filter((s) => s.labels.nic === 'net1').length, 0, 'no steering decided: no sample');
  assert.equal(family(fams, 'virt_ebpf_nic_program_id').samples.length, 1, 'only the NIC with a program');
});

test('--prometheus: label values escaped (backslash, quote, newline), series unique where names repeat, empty report', () => {
  assert.equal(escapeLabelValue('a\\b"c\nd'), 'a\\\\b\\"c\\nd');
  const odd = 'we"ird\\name\nx';
  const d0 = REPORT.domains[0];
  const doc = statusDocument(
    {
      domains: [
        { ...d0, name: odd },
        { pid: 1, name: 'twin', nics: [], plainNics: [{ hashReport: false, steering: decideSteering({ rss: false, hashReportOffered: false, vhost: false, program: false }) }, { hashReport: false, steering: decideSteering({ rss: false, hashReportOffered: false, vhost: false, program: false }) }] },
        { pid: 2, name: 'twin', nics: [], plainNics: [] },
        { pid: 3, nics: [], plainNics: [] },
      ],
    },
    { name: 'h"1', uuidSource: 'smbios', uuidProblem: 'none here' },
    AT,
  );
  const text = statusPrometheus(doc);
  assert.ok(text.includes('domain="we\\"ird\\\\name\\nx"'), 'escaped in the text');
  const fams = parseExposition(text);
  assert.equal(sample(fams, 'virt_ebpf_nic_program_id', { domain: odd, nic: 'net0' }), d0.nics[0].ebpf!.progId, 'and read back exactly');
  assert.equal(sample(fams, 'virt_ebpf_status_info', {}), 1);
  assert.equal(family(fams, 'virt_ebpf_status_info').samples[0].labels.host, 'h"1');
  assert.deepEqual(
    family(fams, 'virt_ebpf_domain_info').samples.map((s) => s.labels.domain),
    [odd, 'twin (pid 1)', 'twin (pid 2)', 'pid 3'],
  );
  assert.deepEqual(
    family(fams, 'virt_ebpf_nic_info').samples.filter((s) => s.labels.domain === 'twin (pid 1)').map((s) => s.labels.nic),
    ['#0', '#1'],
  );
  const empty = parseExposition(statusPrometheus(statusDocument({ domains: [] }, HOST, AT)));
  assert.deepEqual([...empty.keys()], ['virt_ebpf_status_info', 'virt_ebpf_status_collected_timestamp_seconds', 'virt_ebpf_domains']);
  assert.equal(sample(empty, 'virt_ebpf_domains', {}), 0);
});

test('the strict parser rejects what the format forbids', () => {
  const ok = '# HELP a_b help\n# TYPE a_b gauge\na_b{x="1"} 2\n';
  assert.equal(parseExposition(ok).get('a_b')!.samples[0].value, 2);
  const bad: Array<[string, RegExp]> = [
    ['a_b 1\n', /outside its family/],
    ['# HELP a_b h\na_b 1\n', /outside its family/],
    [ok + 'a_b{x="1"} 3\n', /duplicate series/],
    ['# HELP a-b h\n# TYPE a-b gauge\n', /bad metric name/],
    ['# HELP a_b h\n# TYPE a_b gauge\na_b{x="1} 2\n', /unterminated|expected/],
    ['# HELP a_b h\n# TYPE a_b gauge\na_b{x="\\t"} 2\n', /bad escape/],
    ['# HELP a_b h\n# TYPE a_b gauge\na_b one\n', /not a number/],
    ['# HELP a_b h\n# TYPE a_b gauge\na_b 1 1700000000\n', /no timestamp/],
    [ok + '# HELP a_b h\n', /declared twice/],
    [ok.trimEnd(), /end with a newline/],
  ];
  for (const [text, why] of bad) assert.throws(() => parseExposition(text), why, JSON.stringify(text));
});

test('status: --json and --prometheus together is a one-line usage error, before anything is read', async () => {
  await assert.rejects(runStatus(['--json', '--prometheus']), (e) => isVirtEbpfError(e, 'USAGE') && /--json and --prometheus are two output formats; choose one/.test(e.message) && /--json \| --prometheus/.test(e.remedy));
});
