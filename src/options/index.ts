/**
 * Minimal option parsing shared by the subcommands: `--flag`, `--opt VALUE`, `--opt=VALUE`,
 * and `--` ending the options. Unknown options are a USAGE error, never ignored.
 */
import { VirtEbpfError } from '../errors';

export interface ParsedArgs {
  flags: Set<string>;
  values: Map<string, string>;
  positional: string[];
  /** everything after `--` */
  rest: string[];
}

export function parseArgs(argv: readonly string[], spec: { flags?: string[]; values?: string[] }, command: string): ParsedArgs {
  const flags = new Set<string>();
  const values = new Map<string, string>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') return { flags, values, positional, rest: argv.slice(i + 1) };
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const key = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (spec.flags?.includes(key) && eq < 0) {
        flags.add(key);
      } else if (spec.values?.includes(key)) {
        const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
        if (v === undefined) throw new VirtEbpfError('USAGE', `${command}: --${key} needs a value`, { remedy: `run \`virt-ebpf help\`` });
        values.set(key, v);
      } else {
        throw new VirtEbpfError('USAGE', `${command}: unknown option ${a}`, { remedy: 'run `virt-ebpf help` for the options' });
      }
    } else {
      positional.push(a);
    }
  }
  return { flags, values, positional, rest: [] };
}
