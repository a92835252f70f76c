/**
 * One RSS context per load, with the emulator's object validated once per thread: QEMU's real
 * object (probed from the installed emulator), loaded into the real kernel.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { loadRssContext, validatedObjects, VALIDATED_OBJECTS } from '../../src/context/rss';
import { probeEmulator, type EmulatorCaps } from '../../src/emulator';
import { loadRss, validateRssObject } from '../../src/bpf';
import { closeAll, type OwnedFd } from '../../src/fdpass';
import { isVirtEbpfError } from '../../src/errors';
import elf = require('../../src/bpf/spec');
import { needRoot, QEMU, tempDir, watchFds } from '../harness';

const dir = tempDir('virt-ebpf-context-');
const checkLeaks = watchFds();
let caps: EmulatorCaps;
before(async () => {
  caps = (await probeEmulator(QEMU, { cacheDir: join(dir.path, 'cache') })).caps;
});
after(() => {
  dir.remove();
  checkLeaks();
});

/** The same emulator's caps with another object: `bytes` encoded, under `digest` (its own by default). */
function withObject(bytes: Buffer, digest = createHash('sha256').update(bytes).digest('hex')): EmulatorCaps {
  return { ...caps, rssObject: bytes.toString('base64'), rssObjectSha256: digest };
}

async function load(c: EmulatorCaps): Promise<{ progId?: number; fds: OwnedFd[] }> {
  const got = await loadRssContext(c);
  return { progId: got.descriptor.progId, fds: got.fds };
}

test('loads of one emulator each get their own kernel objects, from its object parsed once', async (t) => {
  needRoot('loading BPF needs CAP_BPF');
  const object = Buffer.from(caps.rssObject!, 'base64');
  const build = withObject(Buffer.concat([object, Buffer.alloc(100)])); // a build this thread has not loaded
  const parses = t.mock.method(elf, 'parseBpfObject');
  const got: Array<{ progId?: number; fds: OwnedFd[] }> = [];
  try {
    for (let i = 0; i < 3; i++) got.push(await load({ ...build })); // equal caps, each its own copy
    assert.deepEqual(got.map((g) => g.fds.length), [4, 4, 4]);
    assert.equal(new Set(got.map((g) => g.progId)).size, 3, 'each load is a program of its own');
    assert.equal(parses.mock.callCount(), 1, 'the object was parsed once for three loads');
  } finally {
    closeAll(got.flatMap((g) => g.fds));
  }
  // The validated object holds a copy: changing the caller's bytes afterwards changes nothing loaded.
  const validated = validateRssObject(object);
  object.fill(0);
  loadRss(validated).close();
});

test('an object that changed under the same digest is refused, also after the right one was validated', async () => {
  needRoot('loading BPF needs CAP_BPF');
  const good = await load(caps);
  closeAll(good.fds);
  const tampered = Buffer.from(caps.rssObject!, 'base64');
  tampered[tampered.length - 1] ^= 0xff;
  await assert.rejects(load(withObject(tampered, caps.rssObjectSha256)), (e: unknown) => isVirtEbpfError(e, 'CACHE_CORRUPT'));
  // and the right object still loads
  const again = await load(caps);
  closeAll(again.fds);
});

test(`a thread keeps at most ${VALIDATED_OBJECTS} emulator objects validated`, async () => {
  needRoot('loading BPF needs CAP_BPF');
  const object = Buffer.from(caps.rssObject!, 'base64');
  for (let i = 1; i <= VALIDATED_OBJECTS + 3; i++) {
    // Another build's object, as far as the digest goes: the same ELF with i bytes of padding after it.
    const got = await load(withObject(Buffer.concat([object, Buffer.alloc(i)])));
    closeAll(got.fds);
    assert.equal(got.fds.length, 4);
    assert.ok(validatedObjects() <= VALIDATED_OBJECTS, `${validatedObjects()} objects held after ${i} builds`);
  }
  assert.equal(validatedObjects(), VALIDATED_OBJECTS);
});

test('loadRss refuses what validateRssObject did not make', () => {
  const forged = Object.freeze({ spec: validateRssObject(Buffer.from(caps.rssObject!, 'base64')).spec });
  assert.throws(() => loadRss(forged), /validateRssObject/);
});
