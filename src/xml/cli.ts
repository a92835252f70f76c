/**
 * `virt-ebpf xml …`: the argument layer over the transformer. Pure apart from reading FILE, so
 * the main CLI, a KubeVirt sidecar or a test can call it and decide where the output goes.
 *
 *   virsh dumpxml vm | virt-ebpf xml enable --all-virtio --queues 4 > vm.xml && virsh define vm.xml
 */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import { POLICIES, type Policy } from './config';
import { xmlHelp } from './usage';
import { describeChange, disableDomain, enableDomain, isEnabled, readConfig, rssNics, warningLines, type Change } from './transform';

export const DEFAULT_WRAPPER_DIR = '/usr/libexec/virt-ebpf';

export interface CommandResult {
  stdout: string;
  stderr: string;
  /** 0 done, 1 refused or failed, 2 bad usage. */
  code: number;
}

/** The wrapper for an emulator: same file name, in the wrapper directory. */
export function wrapperInDir(dir: string): (emulator: string) => string {
  return (emulator) => posix.join(dir, posix.basename(emulator));
}

function usage(message: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', message, { remedy: 'see `virt-ebpf xml --help`' });
}

interface Parsed {
  command: 'enable' | 'disable' | 'show';
  file?: string;
  allVirtio: boolean;
  queues?: number;
  policy?: Policy;
  hotplug?: 'on' | 'off';
  wrapperDir: string;
  defaultEmulator?: string;
}

function parse(argv: string[]): Parsed | 'help' {
  if (argv.length === 0 || argv.includes('--help') || argv.includes('-h')) return 'help';
  const [command, ...rest] = argv;
  if (command !== 'enable' && command !== 'disable' && command !== 'show') throw usage(`unknown xml command "${command}"`);
  const out: Parsed = { command, allVirtio: false, wrapperDir: DEFAULT_WRAPPER_DIR };
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === '-' || !arg.startsWith('-')) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const value = (): string => {
      if (eq >= 0) return arg.slice(eq + 1);
      const v = rest[++i];
      if (v === undefined) throw usage(`${name} needs a value`);
      return v;
    };
    if (command !== 'enable') throw usage(`${command} takes no option ${name}`);
    switch (name) {
      case '--all-virtio':
        if (eq >= 0) throw usage('--all-virtio takes no value');
        out.allVirtio = true;
        break;
      case '--queues': {
        const v = value();
        if (!/^[0-9]+$/.test(v)) throw usage(`--queues needs a whole number, not "${v}"`);
        out.queues = Number(v);
        break;
      }
      case '--policy': {
        const v = value();
        if (!POLICIES.includes(v as Policy)) throw usage(`--policy must be one of ${POLICIES.join(', ')}, not "${v}"`);
        out.policy = v as Policy;
        break;
      }
      case '--hotplug': {
        const v = value();
        if (v !== 'on' && v !== 'off') throw usage(`--hotplug must be on or off, not "${v}"`);
        out.hotplug = v;
        break;
      }
      case '--wrapper-dir': {
        const v = value();
        if (!v.startsWith('/')) throw usage(`--wrapper-dir must be an absolute path, not "${v}"`);
        out.wrapperDir = v;
        break;
      }
      case '--default-emulator':
        out.defaultEmulator = value();
        break;
      default:
        throw usage(`unknown option ${name}`);
    }
  }
  if (positional.length > 1) throw usage(`expected at most one FILE, got ${positional.length}`);
  if (positional[0] !== undefined && positional[0] !== '-') out.file = positional[0];
  return out;
}

/** What a transform changed and warned about, one `virt-ebpf: …` line each (for stderr). */
export function report(changes: Change[], warnings: string[]): string {
  return changes.map((c) => `virt-ebpf: changed: ${describeChange(c)}\n`).join('') + warningLines(warnings);
}

/**
 * Runs `virt-ebpf xml ARGV…` (argv without the leading `xml`). `stdin` may be a function so the
 * caller need not guess from argv whether stdin is read: it is called only without FILE or with -.
 */
export function runXmlCommand(argv: string[], stdin: string | (() => string)): CommandResult {
  try {
    const p = parse(argv);
    if (p === 'help') return { stdout: xmlHelp(DEFAULT_WRAPPER_DIR), stderr: '', code: 0 };
    let xml: string;
    if (p.file === undefined) {
      xml = typeof stdin === 'function' ? stdin() : stdin;
    } else {
      try {
        xml = readFileSync(p.file, 'utf8');
      } catch (e) {
        throw new VirtEbpfError('USAGE', `cannot read ${p.file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
          remedy: 'pass a readable domain XML file, or - for stdin',
          cause: e,
        });
      }
    }
    switch (p.command) {
      case 'enable': {
        const r = enableDomain(xml, {
          wrapperFor: wrapperInDir(p.wrapperDir),
          allVirtio: p.allVirtio,
          ...(p.queues !== undefined ? { queues: p.queues } : {}),
          ...(p.policy !== undefined ? { policy: p.policy } : {}),
          ...(p.hotplug !== undefined ? { hotplug: p.hotplug } : {}),
          ...(p.defaultEmulator !== undefined ? { defaultEmulator: p.defaultEmulator } : {}),
        });
        return { stdout: r.xml, stderr: report(r.changes, r.warnings), code: 0 };
      }
      case 'disable': {
        const r = disableDomain(xml);
        const note = r.changes.length === 0 ? 'virt-ebpf: the domain is not enabled; unchanged\n' : '';
        return { stdout: r.xml, stderr: note + report(r.changes, r.warnings), code: 0 };
      }
      case 'show': {
        const body = { enabled: isEnabled(xml), config: readConfig(xml), rssNics: rssNics(xml) };
        return { stdout: JSON.stringify(body, null, 2) + '\n', stderr: '', code: 0 };
      }
    }
  } catch (e) {
    if (isVirtEbpfError(e)) return { stdout: '', stderr: e.oneLine() + '\n', code: e.code === 'USAGE' ? 2 : 1 };
    throw e;
  }
}
