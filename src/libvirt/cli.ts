/**
 * `virt-ebpf enable|disable DOMAIN` and `virt-ebpf define FILE`: the argument layer over
 * commands.ts. Returns what to print; errors are thrown as VirtEbpfError for the CLI to report.
 */
import { parseArgs } from '../options';
import { VirtEbpfError } from '../errors';
import { POLICIES, type Policy } from '../xml';
import { defineFile, disableDomain, enableDomain, type DefineCommandOptions, type DomainOutcome } from './commands';
import { warningLines } from '../xml/transform';
import { openConnection } from './connection';

import { DOMAIN_COMMAND_HELP as HELP, DOMAIN_COMMAND_SUMMARY, DOMAIN_COMMAND_USAGE, type DomainCommand } from './usage';

export type { DomainCommand };

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

/** Runs one of the three commands (argv without the command name) and returns what to print: the outcome on stdout, warnings on stderr. */
export function runDomainCommand(command: DomainCommand, argv: readonly string[]): { stdout: string; stderr: string; code: number } {
  if (argv.includes('--help') || argv.includes('-h')) return { stdout: `usage: ${DOMAIN_COMMAND_USAGE[command]}\n${DOMAIN_COMMAND_SUMMARY[command]}\n${HELP}`, stderr: '', code: 0 };
  const p = parseDomainCommand(command, argv);
  const conn = openConnection(p.uri);
  try {
    const o =
      command === 'enable' ? enableDomain(conn, p.target, p.opts) : command === 'disable' ? disableDomain(conn, p.target) : defineFile(conn, p.target, p.opts);
    return { stdout: p.json ? formatJson(o) : o.lines.join('\n') + '\n', stderr: warningLines(o.warnings), code: 0 };
  } finally {
    conn.close();
  }
}
