/**
 * The Node half of the emulator wrapper: `node main.js REAL ARGS…`, running as libvirt's QEMU
 * user (unprivileged). Asks the broker for one context per rss=on virtio-net device, names the
 * fds in those devices and execs the real QEMU with the same pid libvirt is watching.
 * Everything it prints goes to QEMU's stderr, i.e. the domain log and `virsh start`'s error.
 */
import { brokerRequest } from '../broker/client';
import { domainIdentity, namedFds } from '../argv';
import { finalArgv, planDevices } from '../exec/plan';
import { setInheritance } from '../exec/fds';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import * as libc from '../sys/libc';
import { resolvePolicy } from './policy';

function passThrough(real: string, args: string[]): never {
  setInheritance([0, 1, 2, ...namedFds(args)]);
  return libc.execve(real, [real, ...args], process.env);
}

export function runWrapper(real: string, args: string[], opts: { socket?: string } = {}): never {
  const plan = planDevices(args);
  if (plan.devices.length === 0) return passThrough(real, args);
  const domain = domainIdentity(args);
  let got;
  try {
    got = brokerRequest({ op: 'acquire', emulator: real, count: plan.devices.length, domain }, { socket: opts.socket ?? process.env.VIRT_EBPF_BROKER_SOCKET });
  } catch (e) {
    const policy = resolvePolicy(domain.uuid);
    const line = isVirtEbpfError(e) ? e.oneLine() : `virt-ebpf: ${String(e)}`;
    if (policy === 'strict') {
      process.stderr.write(`${line}\n`);
      process.exit(1);
    }
    process.stderr.write(`${line}\nvirt-ebpf: policy is fallback: starting ${domain.name ?? 'the domain'} without eBPF RSS steering\n`);
    return passThrough(real, args);
  }
  const { reply, fds } = got;
  if (reply.op !== 'acquire') throw new VirtEbpfError('BROKER_PROTOCOL', 'broker answered a different request', { remedy: 'restart the broker' });
  let at = 0;
  const perDevice = reply.contexts.map((c) => {
    const mine = fds.slice(at, at + c.fds).map((f) => f.take());
    at += c.fds;
    return mine;
  });
  const { argv, keep } = finalArgv(args, plan, perDevice, reply.contexts[0].property, reply.propTypes);
  setInheritance(keep);
  return libc.execve(real, [real, ...argv], process.env);
}

if (require.main === module) {
  const [real, ...args] = process.argv.slice(2);
  try {
    runWrapper(real, args);
  } catch (e) {
    process.stderr.write(`${isVirtEbpfError(e) ? e.oneLine() : `virt-ebpf wrapper: ${String(e)}`}\n`);
    process.exit(1);
  }
}
