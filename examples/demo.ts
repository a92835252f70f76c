/**
 * The built-in example (README's first command): probe the installed emulators, then start
 * QEMU as libvirt's unprivileged user with two multiqueue-tap virtio-net NICs with rss=on via
 * `virt-ebpf exec`, and show what the QEMU process holds and what QMP says. Cleans up after.
 */
import { spawn, execFileSync } from 'node:child_process';
import { chownSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient, qomGet } from '../src/qmp';
import { createTap, Tap } from '../src/guest/tap';
import { bpfFdInfo } from '../src/fdpass';
import { lookupUser } from '../src/sys/users';
import { tempDir } from '../test/harness';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'dist/src/cli/main.js');
const QEMU = process.env.VIRT_EBPF_QEMU ?? '/usr/bin/qemu-system-x86_64';
const USER = process.env.VIRT_EBPF_QEMU_USER ?? 'libvirt-qemu';

async function main(): Promise<void> {
  console.log('$ virt-ebpf probe');
  console.log(execFileSync(process.execPath, [CLI, 'probe'], { encoding: 'utf8' }));
  const dir = tempDir('virt-ebpf-demo-');
  const account = lookupUser(USER);
  chownSync(dir.path, account.uid, account.gid);
  const taps: Tap[] = [];
  let qemu: ReturnType<typeof spawn> | undefined;
  try {
    for (let i = 0; i < 2; i++) taps.push(await createTap({ user: USER }));
    const sock = join(dir.path, 'qmp.sock');
    const args = ['exec', '--verbose', '--user', USER, '--', QEMU, '-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`];
    taps.forEach((t, i) => args.push('-netdev', `tap,id=n${i},ifname=${t.name},script=no,downscript=no,vhost=off,queues=4`, '-device', `virtio-net-pci,netdev=n${i},mq=on,vectors=10,rss=on,id=net${i}`));
    console.log(`$ virt-ebpf ${args.join(' ')}`);
    qemu = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
    let qmp: QmpClient | undefined;
    for (let t = 0; t < 200 && !qmp; t++) {
      qmp = await QmpClient.connect(sock, { timeoutMs: 1000 }).catch(async () => {
        await new Promise((r) => setTimeout(r, 100));
        return undefined;
      });
    }
    if (!qmp) throw new Error('QEMU did not come up');
    const pid = qemu.pid!;
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    console.log(`\nQEMU pid ${pid} runs as uid ${/^Uid:\s+(\d+)/m.exec(status)?.[1]} (${USER}), CapEff ${/^CapEff:\s+(\S+)/m.exec(status)?.[1]}`);
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    for (const dev of cmd.filter((a, i) => cmd[i - 1] === '-device')) {
      const j = JSON.parse(dev);
      const fds: string[] = j['ebpf-rss-fds'];
      const objs = fds.map((n) => {
        const info = bpfFdInfo(Number(n), pid);
        return `${n}→${readlinkSync(`/proc/${pid}/fd/${n}`).replace('anon_inode:', '')}#${info.id}`;
      });
      const realized = await qomGet(qmp, `/machine/peripheral/${j.id}`, 'realized');
      console.log(`  ${j.id}: ebpf-rss-fds ${objs.join(' ')}  realized=${realized}`);
    }
    await qmp.execute('quit').catch(() => undefined);
    await qmp.close();
  } finally {
    if (qemu && qemu.exitCode === null) {
      qemu.kill('SIGKILL');
    }
    for (const t of taps) await t.remove();
    dir.remove();
  }
}

main().catch((e) => {
  console.error(`demo failed: ${(e as Error).message}`);
  process.exitCode = 1;
});
