/**
 * `virt-ebpf enable|disable DOMAIN` and `virt-ebpf define FILE`: the argument layer over
 * commands.ts. Returns what to print; errors are thrown as VirtEbpfError for the CLI to report.
 */
import { parseArgs } from '../options';
import { VirtEbpfError } from '../errors';
import { POLICIES, type Policy } from '../xml';
import { defineFile, disableDomain, enableDomain, type DefineCommandOptions, type DomainOutcome } from './commands';
import { openConnection } from './connection';

export type DomainCommand = 'enable' | 'disable' | 'define';

const ENABLE_OPTS = '[--all-virtio] [--queues N] [--policy strict|fallback] [--hotplug on|off] [--wrapper-dir DIR]';
export const DOMAIN_COMMAND_USAGE: Record<DomainCommand, string> = {
  enable: `virt-ebpf enable DOMAIN ${ENABLE_OPTS} [--connect URI] [--json]`,
  disable: 'virt-ebpf disable DOMAIN [--connect URI] [--json]',
  define: `virt-ebpf define FILE ${ENABLE_OPTS} [--default-emulator PATH] [--connect URI] [--json]`,
};
export const DOMAIN_COMMAND_SUMMARY: Record<DomainCommand, string> = {
  enable: "give a defined domain eBPF RSS: its persistent definition points at the wrapper (applies at the next start)",
  disable: 'undo enable on a defined domain, restoring exactly what enable changed',
  define: 'define a domain from FILE with eBPF RSS enabled, in one step (like virsh define)',
};

const HELP = `
Options:
  --all-virtio          turn rss on for every virtio NIC on a tap backend that has no rss setting
  --queues N            queues (>= 2) for the NICs --all-virtio turns on
  --policy P            what the wrapper does when eBPF fds are unavailable (strict|fallback; default strict)
  --hotplug on|off      give NICs hot-plugged with rss on their eBPF fds (hot-plug shim in QEMU; default on)
  --wrapper-dir DIR     where the wrappers are (default /usr/libexec/virt-ebpf)
  --default-emulator P  define: the emulator to wrap for a FILE without <emulator> (default: libvirt's choice)
  --connect URI         libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)
  --json                print the outcome as JSON
`;

function usage(command: DomainCommand, message: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', `${command}: ${message}`, { remedy: `usage: ${DOMAIN_COMMAND_USAGE[command]}` });
}

export function parseDomainCommand(command: DomainCommand, argv: readonly string[]): { target: string; uri?: string; json: boolean; opts: DefineCommandOptions } {
  const enableLike = command !== 'disable';
  const a = parseArgs(
    argv,
    {
      flags: ['json', ...(enableLike ? ['all-virtio'] : [])],
      values: ['connect', ...(enableLike ? ['queues', 'policy', 'hotplug', 'wrapper-dir'] : []), ...(command === 'define' ? ['default-emulator'] : [])],
    },
    command,
  );
  if (a.positional.length !== 1 || a.rest.length) throw usage(command, `expected exactly one ${command === 'define' ? 'FILE' : 'DOMAIN'}`);
  const opts: DefineCommandOptions = {};
  if (a.flags.has('all-virtio')) opts.allVirtio = true;
  const queues = a.values.get('queues');
  if (queues !== undefined) {
    if (!/^[0-9]+$/.test(queues)) throw usage(command, `--queues needs a whole number, not "${queues}"`);
    opts.queues = Number(queues);
  }
  const policy = a.values.get('policy');
  if (policy !== undefined) {
    if (!POLICIES.includes(policy as Policy)) throw usage(command, `--policy must be one of ${POLICIES.join(', ')}, not "${policy}"`);
    opts.policy = policy as Policy;
  }
  const hotplug = a.values.get('hotplug');
  if (hotplug !== undefined) {
    if (hotplug !== 'on' && hotplug !== 'off') throw usage(command, `--hotplug must be on or off, not "${hotplug}"`);
    opts.hotplug = hotplug;
  }
  for (const [key, field] of [
    ['wrapper-dir', 'wrapperDir'],
    ['default-emulator', 'defaultEmulator'],
  ] as const) {
    const v = a.values.get(key);
    if (v === undefined) continue;
    if (!v.startsWith('/')) throw usage(command, `--${key} must be an absolute path, not "${v}"`);
    opts[field] = v;
  }
  const uri = a.values.get('connect');
  return { target: a.positional[0], ...(uri !== undefined ? { uri } : {}), json: a.flags.has('json'), opts };
}

function formatJson(o: DomainOutcome): string {
  const { before: _b, after: _a, ...rest } = o;
  return JSON.stringify(rest, null, 2) + '\n';
}

/** Runs one of the three commands (argv without the command name) and returns what to print. */
export function runDomainCommand(command: DomainCommand, argv: readonly string[]): { stdout: string; code: number } {
  if (argv.includes('--help') || argv.includes('-h')) return { stdout: `usage: ${DOMAIN_COMMAND_USAGE[command]}\n${DOMAIN_COMMAND_SUMMARY[command]}\n${HELP}`, code: 0 };
  const p = parseDomainCommand(command, argv);
  const conn = openConnection(p.uri);
  try {
    const o =
      command === 'enable' ? enableDomain(conn, p.target, p.opts) : command === 'disable' ? disableDomain(conn, p.target) : defineFile(conn, p.target, p.opts);
    return { stdout: p.json ? formatJson(o) : o.lines.join('\n') + '\n', code: 0 };
  } finally {
    conn.close();
  }
}
