/**
 * `virt-ebpf exec [--user U] -- EMULATOR ARGS…`: as root, load one context per device that
 * wants one (a virtio-net device with rss on), name the fds in that device, drop to U and exec the emulator (same
 * pid). Useful on its own without libvirt, and the model for the libvirt emulator wrapper.
 */
import { VirtEbpfError } from '../errors';
import { closeAll, OwnedFd } from '../fdpass';
import { probeEmulator } from '../emulator';
import { assertSupported, loadContext } from '../context';
import * as libc from '../sys/libc';
import { lookupUser } from '../sys/users';
import { setInheritance } from './fds';
import { finalArgv, planDevices } from './plan';

export { planDevices, finalArgv } from './plan';
export { setInheritance } from './fds';

export interface ExecOptions {
  user?: string;
  /** EMULATOR followed by its arguments */
  command: string[];
  cacheDir?: string;
  /** print what is done to stderr */
  verbose?: boolean;
}

export async function execEmulator(opts: ExecOptions): Promise<never> {
  if (process.getuid?.() !== 0) {
    throw new VirtEbpfError('NOT_ROOT', 'exec needs root to load eBPF and to drop to the QEMU user', {
      remedy: 'run it as root (sudo virt-ebpf exec --user libvirt-qemu -- …)',
    });
  }
  const [emulator, ...args] = opts.command;
  if (!emulator) throw new VirtEbpfError('USAGE', 'exec needs an emulator to run', { remedy: 'usage: virt-ebpf exec [--user U] -- EMULATOR ARGS…' });
  const account = opts.user !== undefined ? lookupUser(opts.user) : undefined;
  const plan = planDevices(args);
  const { caps } = await probeEmulator(emulator, { cacheDir: opts.cacheDir });
  const owned: OwnedFd[] = [];
  try {
    let argv = args;
    let keep = [0, 1, 2];
    if (plan.devices.length > 0) {
      assertSupported(caps);
      const perDevice = [];
      for (const device of plan.devices) {
        const ctx = await loadContext(caps, device.kind.kind);
        owned.push(...ctx.fds);
        perDevice.push({ fds: ctx.fds.map((f) => f.fd), prop: ctx.descriptor.property });
      }
      ({ argv, keep } = finalArgv(args, plan, perDevice, caps.deviceProps ?? {}));
    } else {
      keep = finalArgv(args, plan, [], {}).keep;
    }
    if (opts.verbose) {
      process.stderr.write(`virt-ebpf: ${plan.devices.length} RSS device(s) via ${caps.protocol ?? 'none'}; exec ${caps.realpath}${account ? ` as ${account.name}` : ''}\n`);
    }
    setInheritance(keep);
    if (account) libc.dropPrivileges(account.uid, account.gid, account.groups);
    return libc.execve(caps.realpath, [emulator, ...argv], process.env);
  } catch (e) {
    closeAll(owned);
    throw e;
  }
}
