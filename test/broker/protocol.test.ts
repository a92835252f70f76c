import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRequest, parseReply, errorReply, MAX_LINE } from '../../src/broker/protocol';
import { validateConfig, libvirtQemuAccount } from '../../src/broker/config';
import { isVirtEbpfError, VirtEbpfError } from '../../src/errors';
import { tempDir } from '../harness';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const refused = (line: string, re: RegExp) =>
  assert.throws(() => parseRequest(line), (e) => isVirtEbpfError(e, 'BROKER_PROTOCOL') && re.test(e.message), line);

test('requests: well-formed ones parse', () => {
  assert.deepEqual(parseRequest('{"v":1,"id":7,"op":"acquire","emulator":"/usr/bin/qemu-system-x86_64","count":2,"domain":{"name":"vm","uuid":"u"}}'), {
    v: 1, id: 7, op: 'acquire', emulator: '/usr/bin/qemu-system-x86_64', count: 2, domain: { name: 'vm', uuid: 'u' },
  });
  assert.equal(parseRequest('{"v":1,"id":1,"op":"hello"}').op, 'hello');
});

test('requests: every malformed one is refused with the reason', () => {
  refused('nope', /not JSON/);
  refused('[1]', /not a JSON object/);
  refused('{"v":2,"id":1,"op":"hello"}', /version 2/);
  refused('{"v":1,"op":"hello"}', /"id"/);
  refused('{"v":1,"id":1,"op":"load"}', /unknown op/);
  refused('{"v":1,"id":1,"op":"acquire","emulator":"qemu","count":1}', /absolute path/);
  refused('{"v":1,"id":1,"op":"acquire","emulator":"/usr/bin/q","count":0}', /count/);
  refused('{"v":1,"id":1,"op":"acquire","emulator":"/usr/bin/q","count":17}', /count/);
  refused('{"v":1,"id":1,"op":"release","domain":{}}', /name or a uuid/);
  refused('x'.repeat(MAX_LINE + 1), /longer than/);
});

test('requests: a peer cannot hand the broker bytecode or a helper (closed shape)', () => {
  refused('{"v":1,"id":1,"op":"acquire","emulator":"/usr/bin/q","count":1,"object":"f0VMRg=="}', /unexpected field "object"/);
  refused('{"v":1,"id":1,"op":"prewarm","emulator":"/usr/bin/q","count":1,"helper":"/tmp/h"}', /unexpected field "helper"/);
});

test('replies: a refusal becomes the broker\'s own typed error on the client', () => {
  const line = JSON.stringify(errorReply(3, new VirtEbpfError('BROKER_DENIED', 'uid 5 may not', { remedy: 'add it' })));
  assert.throws(() => parseReply(line, 3), (e) => isVirtEbpfError(e, 'BROKER_DENIED') && e.remedy === 'add it');
  assert.throws(() => parseReply('{"v":1,"id":4,"ok":true}', 3), (e) => isVirtEbpfError(e, 'BROKER_PROTOCOL'));
});

test('config: defaults, and an invalid field is named exactly', () => {
  const c = validateConfig({});
  assert.equal(c.socket, '/run/virt-ebpf/broker.sock');
  assert.equal(c.pool.size, 2);
  assert.equal(c.policy, 'strict');
  assert.throws(() => validateConfig({ pool: { size: -1 } }), (e) => isVirtEbpfError(e, 'CONFIG_INVALID') && /field "pool.size"/.test(e.message));
  assert.throws(() => validateConfig({ policy: 'maybe' }), (e) => isVirtEbpfError(e, 'CONFIG_INVALID') && /field "policy"/.test(e.message));
  assert.throws(() => validateConfig({ sockt: '/x' }), (e) => isVirtEbpfError(e, 'CONFIG_INVALID') && /unknown field sockt/.test(e.message));
  assert.throws(() => validateConfig({ emulatorDirs: ['relative'] }), (e) => isVirtEbpfError(e, 'CONFIG_INVALID') && /emulatorDirs\[0\]/.test(e.message));
});

test('qemu.conf: user/group read from libvirt, else Debian defaults', () => {
  const d = tempDir();
  try {
    const f = join(d.path, 'qemu.conf');
    writeFileSync(f, '# user = "nobody"\nuser = "qemu"\n  group = "kvm"\n');
    assert.deepEqual(libvirtQemuAccount(f), { user: 'qemu', group: 'kvm' });
    assert.deepEqual(libvirtQemuAccount(join(d.path, 'absent')), { user: 'libvirt-qemu', group: 'libvirt-qemu' });
  } finally {
    d.remove();
  }
});
