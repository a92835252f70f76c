/**
 * The built-in example (README's first command, via scripts/demo.sh): eBPF RSS steering under
 * libvirt, seen in one command. It probes the emulators, installs virt-ebpf for real, starts
 * the broker (unless one answers), boots the guest fixture as a libvirt domain enabled with
 * `virt-ebpf enable`, has the guest turn RSS on with `ethtool -X eth0 equal 2`, and prints
 * `virt-ebpf status` and `virt-ebpf verify` for it, then hot-plugs a second RSS NIC with
 * `virsh attach-device --live` and shows it steering too. Then it removes the domain and stops the
 * broker it started — unless `--keep`. The install stays; the last lines say how to remove it.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brokerRequest, DEFAULT_SOCKET } from '../src/broker/client';
import { DEFAULT_PREFIX } from '../src/install/runtime';
import { ensureFixture, startLibvirtGuest, LIBVIRT_URI, type LibvirtGuest } from '../test/support/guest';
import { isVirtEbpfError } from '../src/errors';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'dist/src/cli/main.js');
const INSTALLED_CLI = join(DEFAULT_PREFIX, 'dist/src/cli/main.js');
const DOMAIN = 'virt-ebpf-demo';
const BROKER_LOG = '/run/virt-ebpf/demo-broker.log';

const USAGE = 'usage: bash scripts/demo.sh [--keep]\n  --keep  leave the demo domain and the broker running afterwards';

function heading(text: string): void {
  console.log(`\n== ${text}`);
}

/** Run the checkout's CLI and print what it prints, as a user would see it. */
function virtEbpf(args: string[], opts: { allowFail?: boolean } = {}): string {
  console.log(`$ virt-ebpf ${args.join(' ')}`);
  try {
    const out = execFileSync(process.execPath, [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    process.stdout.write(out);
    return out;
  } catch (e) {
    const out = String((e as { stdout?: string }).stdout ?? '');
    process.stdout.write(out);
    if (!opts.allowFail) throw new Error(`virt-ebpf ${args[0]} failed (exit status ${(e as { status?: number }).status})`);
    return out;
  }
}

function brokerAnswers(timeoutMs = 500): boolean {
  try {
    brokerRequest({ op: 'hello' }, { socket: DEFAULT_SOCKET, timeoutMs });
    return true;
  } catch {
    return false;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The installed broker, in its own process group (a Ctrl-C here must not kill it before we clean up). */
async function startBroker(): Promise<number> {
  mkdirSync('/run/virt-ebpf', { recursive: true, mode: 0o755 });
  const log = openSync(BROKER_LOG, 'a');
  const child = spawn(process.execPath, [INSTALLED_CLI, 'broker'], { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  child.unref();
  const pid = child.pid!;
  for (let t = 0; t < 150; t++) {
    if (brokerAnswers()) return pid;
    if (!alive(pid)) break;
    await sleep(100);
  }
  let why = '';
  try {
    why = readFileSync(BROKER_LOG, 'utf8').trim().split('\n').slice(-3).join('\n');
  } catch {
    /* no log */
  }
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  throw new Error(`the broker did not come up on ${DEFAULT_SOCKET}:\n${why}`);
}

async function stopBroker(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let t = 0; t < 100 && alive(pid); t++) await sleep(100);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

function virsh(...args: string[]): { ok: boolean; out: string } {
  try {
    return { ok: true, out: execFileSync('virsh', ['-q', '-c', LIBVIRT_URI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
  } catch (e) {
    return { ok: false, out: String((e as { stderr?: string }).stderr ?? '') };
  }
}

async function main(argv: string[]): Promise<void> {
  const unknown = argv.filter((a) => a !== '--keep');
  if (unknown.length) {
    console.error(`demo: unknown argument ${unknown[0]}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  const keep = argv.includes('--keep');
  let brokerPid: number | undefined;
  let guest: LibvirtGuest | undefined;
  let installed = false;
  // Ctrl-C: exit hooks (the guest driver's and ours) still remove what we started.
  const onExit = (): void => {
    if (brokerPid !== undefined && !keep && alive(brokerPid)) process.kill(brokerPid, 'SIGTERM');
  };
  process.once('exit', onExit);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

  try {
    heading('1. Which emulators can take eBPF RSS fds');
    virtEbpf(['probe']);

    heading('2. Install: emulator wrapper, libvirt hook, broker config (idempotent)');
    virtEbpf(['install']);
    installed = true;

    heading('3. The broker: the only privileged piece; loads eBPF and hands the fds over');
    if (brokerAnswers()) {
      console.log(`a broker already answers on ${DEFAULT_SOCKET}: using it`);
    } else {
      brokerPid = await startBroker();
      console.log(`started ${INSTALLED_CLI} broker (pid ${brokerPid}, log ${BROKER_LOG})`);
    }

    heading('4. A guest under libvirt, with one virtio NIC <driver queues=\'4\' rss=\'on\'/>');
    console.log('guest fixture: scripts/guest/build.sh (the first run fetches Debian\'s kernel, busybox and ethtool with apt-get download; later runs reuse .cache/guest)');
    const fixture = await ensureFixture();
    console.log(`guest: Debian kernel ${fixture.manifest.kernelRelease} + busybox + ethtool, ${Math.round(fixture.manifest.initrdBytes / 1e5) / 10} MB initramfs`);
    if (virsh('domuuid', DOMAIN).ok) {
      console.log(`removing the domain ${DOMAIN} a previous --keep run left`);
      virsh('destroy', DOMAIN);
      virsh('undefine', DOMAIN);
    }
    guest = await startLibvirtGuest({
      name: DOMAIN,
      fixture,
      hotplugSlots: 3, // free PCIe ports for step 8's NIC
      // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
      script: ['@channels vebpf_maxq eth0'],
      onStep: (s) => {
        console.log(`$ ${s.command}   (${s.ms} ms)`);
        if (s.command.startsWith('virt-ebpf') && s.output.trim()) console.log(s.output.trimEnd().replace(/^/gm, '  '));
        if (s.command.startsWith('virsh start')) console.log('  (paused until the serial console is attached, so no guest output is lost)');
      },
    });
    const emulator = /<emulator>([^<]*)<\/emulator>/.exec(virsh('dumpxml', DOMAIN).out)?.[1];
    const capEff = /^CapEff:\s+(\S+)/m.exec(readFileSync(`/proc/${guest.pid}/status`, 'utf8'))?.[1];
    console.log(`booted to the guest's prompt in ${(guest.bootMs / 1000).toFixed(1)} s (TCG); emulator ${emulator}`);
    console.log(`QEMU pid ${guest.pid} runs unprivileged (CapEff ${capEff}) on tap ${guest.interfaces[0].tap}`);

    heading('5. In the guest: turn RSS on');
    console.log('guest$ ethtool -X eth0 equal 2');
    await guest.console.run('ethtool -X eth0 equal 2');
    console.log('guest$ ethtool -x eth0');
    const shown = (await guest.console.run('ethtool -x eth0')).output.trimEnd().split('\n');
    const keyAt = shown.findIndex((l) => l.startsWith('RSS hash key'));
    for (const l of [...shown.slice(0, 3), '    …', ...shown.slice(keyAt, keyAt + 2)]) console.log(`  ${l}`);

    heading('6. What steers: QEMU\'s eBPF program and the maps the guest just configured');
    virtEbpf(['status', DOMAIN]);

    heading('7. Proof: the live program against the reference RSS, flow by flow');
    virtEbpf(['verify', DOMAIN]);

    heading('8. Hot-plug: a second RSS NIC, live, with stock libvirt');
    const mac = '52:54:00:be:0f:99';
    const nicFile = join('/run/virt-ebpf', 'demo-nic.xml');
    writeFileSync(nicFile, `<interface type='ethernet'>\n  <mac address='${mac}'/>\n  <model type='virtio'/>\n  <driver queues='4' rss='on'/>\n</interface>\n`);
    console.log(`$ virsh attach-device ${DOMAIN} ${nicFile} --live`);
    const attached = virsh('attach-device', DOMAIN, nicFile, '--live');
    rmSync(nicFile, { force: true });
    if (!attached.ok) throw new Error(`virsh attach-device failed: ${attached.out.trim()}`);
    console.log('  (the hot-plug shim in QEMU gave its device_add a program and maps of its own from the broker)');
    const dev = await guest.console.interfaceWithMac(mac, 60_000);
    for (const cmd of [`ip link set ${dev} up`, `ethtool -L ${dev} combined 4`, `ethtool -X ${dev} weight 1 1 1 1`]) {
      console.log(`guest$ ${cmd}`);
      await guest.console.run(cmd);
    }
    virtEbpf(['status', DOMAIN]);
  } finally {
    heading(keep ? 'Left running (--keep)' : 'Cleaning up');
    if (keep) {
      guest?.detach();
      if (guest) {
        console.log(`domain ${DOMAIN} runs; see it with \`node dist/src/cli/main.js status ${DOMAIN}\``);
        console.log(`  remove it: virsh destroy ${DOMAIN}; virsh undefine ${DOMAIN}; rm -r /var/lib/libvirt/images/virt-ebpf-guest/${DOMAIN}`);
      }
      if (brokerPid !== undefined) console.log(`broker pid ${brokerPid} runs (log ${BROKER_LOG}); stop it with: kill ${brokerPid}`);
    } else {
      if (guest) {
        await guest.close();
        console.log(`destroyed and undefined ${DOMAIN}, removed its files`);
      }
      if (brokerPid !== undefined) {
        await stopBroker(brokerPid);
        console.log(`stopped the broker (pid ${brokerPid})`);
      }
    }
    if (installed) console.log('virt-ebpf stays installed; `node dist/src/cli/main.js uninstall` removes exactly what install added');
  }
}

main(process.argv.slice(2)).catch((e) => {
  console.error(`demo failed: ${isVirtEbpfError(e) ? e.oneLine() : (e as Error).message}`);
  if (isVirtEbpfError(e) && e.detail && process.env.VIRT_EBPF_DEBUG) console.error(e.detail);
  process.exitCode = 1;
});
