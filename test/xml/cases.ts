/** The golden cases shared by the transform, validation, CLI and libvirt tests. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from '../harness';
import { wrapperInDir, type EnableOptions } from '../../src/xml';

export const FIXTURES = join(REPO, 'test', 'fixtures', 'xml');
export const wrapperFor = wrapperInDir('/usr/libexec/virt-ebpf');
export const QEMU_PATH = '/usr/bin/qemu-system-x86_64';
export const WRAPPER = '/usr/libexec/virt-ebpf/qemu-system-x86_64';
export const UPDATE = process.env.VIRT_EBPF_UPDATE_GOLDEN === '1';

export interface GoldenCase {
  name: string;
  opts: Omit<EnableOptions, 'wrapperFor'>;
  /** A fixture printed by `virsh dumpxml` (the others are hand-written). */
  libvirt: boolean;
  warnings?: RegExp[];
}

export const GOLDEN: GoldenCase[] = [
  { name: 'one-rss-nic', opts: {}, libvirt: true },
  { name: 'two-rss-nics', opts: {}, libvirt: true },
  { name: 'no-rss-nic', opts: {}, libvirt: true, warnings: [/no interface has rss='on'/] },
  { name: 'foreign-metadata', opts: {}, libvirt: true },
  { name: 'all-virtio-queues', opts: { allVirtio: true, queues: 4 }, libvirt: true, warnings: [/interface 2 .*rss='off'/, /interface 4 .*macvtap/, /interface 5 .*vhost-user/, /interface 7 .*passt/] },
  { name: 'all-virtio-noqueues', opts: { allVirtio: true }, libvirt: true, warnings: [/interface 0 .*no multiqueue/, /interface 2 .*no multiqueue/] },
  // enabled earlier with policy fallback: enabling again (without a policy) must change nothing
  { name: 'already-enabled', opts: { allVirtio: true }, libvirt: true, warnings: [/interface 0 .*no multiqueue/, /interface 2 .*no multiqueue/] },
  { name: 'no-metadata', opts: {}, libvirt: false },
  { name: 'no-emulator', opts: { defaultEmulator: QEMU_PATH }, libvirt: false },
  { name: 'comment-in-devices', opts: { allVirtio: true }, libvirt: false },
];

export const read = (file: string) => readFileSync(join(FIXTURES, file), 'utf8');

