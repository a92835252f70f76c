#!/usr/bin/env node
/**
 * The `virt-ebpf` command. Each subcommand lives with its concept; this file only parses
 * arguments, dispatches, and turns errors into one line (operation, reason, remedy) and an
 * exit code. VIRT_EBPF_DEBUG=1 adds the evidence (verifier log, stderr, stack).
 */
import { VirtEbpfError, isVirtEbpfError } from '../errors';

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  // The broker's V8 settings, before the command table (and the broker) load.
  if (name === 'broker') (await import('../broker/v8')).brokerV8();
  const { COMMANDS, usage } = await import('./commands');
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    throw new VirtEbpfError('USAGE', `unknown command "${name}"`, { remedy: 'run `virt-ebpf help` for the list of commands' });
  }
  return cmd.run(rest);
}

export function report(e: unknown): number {
  if (isVirtEbpfError(e)) {
    process.stderr.write(e.oneLine() + '\n');
    if (process.env.VIRT_EBPF_DEBUG) {
      if (e.detail) process.stderr.write(e.detail + '\n');
      process.stderr.write((e.stack ?? '') + '\n');
    }
    return e.code === 'USAGE' ? 2 : 1;
  }
  process.stderr.write(`virt-ebpf: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return 70;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.exitCode = report(e);
    },
  );
}
