/**
 * The man page virt-ebpf(8) and the bash completion, made from the commands' own usage text
 * (src/cli/commands.ts, which takes it from each concept's usage.ts) when the package is built:
 * they cannot drift from the CLI. Pure.
 */
import type { Command } from './commands';

export interface ManFacts {
  version: string;
  /** the date the page shows (the package's build date), YYYY-MM-DD */
  date: string;
  prefix: string;
  paths: { wrapperDir: string; hookFile: string; configFile: string; manifest: string; unitDir: string; launcher: string };
}

/** Roff-escape text for the body of a line (backslashes, dashes, a leading dot or quote). */
export function roff(text: string): string {
  const s = text.replace(/\\/g, '\\e').replace(/-/g, '\\-');
  return /^[.']/.test(s) ? `\\&${s}` : s;
}

export function manPage(commands: Record<string, Command>, m: ManFacts): string {
  const lines = [
    `.TH VIRT\\-EBPF 8 "${m.date}" "virt-ebpf ${m.version}" "System Administration"`,
    '.SH NAME',
    'virt\\-ebpf \\- virtio\\-net eBPF RSS for unprivileged QEMU under libvirt',
    '.SH SYNOPSIS',
    '.B virt\\-ebpf',
    '.I COMMAND',
    '[\\fIOPTION\\fR...]',
    '.SH DESCRIPTION',
    roff('virt-ebpf gives the virtio-net NICs of libvirt domains eBPF receive-side scaling while QEMU runs unprivileged. A root broker (virt-ebpfd) probes each emulator, loads QEMU\'s own RSS eBPF program with privileges and hands the program and map fds to QEMU: at start through an emulator wrapper and a libvirt hook, at hot-plug through a small shim inside QEMU.'),
    '.PP',
    roff('Errors are one line: what failed, why (with a code) and what to do. VIRT_EBPF_DEBUG=1 adds the evidence.'),
    '.SH COMMANDS',
  ];
  for (const [name, c] of Object.entries(commands)) {
    lines.push('.TP', `.B ${roff(name)}`, roff(c.summary), '.br', `.I ${roff(c.usage.replace(/^virt-ebpf /, ''))}`);
  }
  lines.push(
    '.SH FILES',
    ...(
      [
        [m.prefix, 'the runtime: compiled code, templates, the C shims, production Node modules'],
        [m.paths.configFile, 'broker configuration (policy, pool size, allowlists)'],
        [m.paths.hookFile, 'the libvirt hook (written by install)'],
        [`${m.paths.wrapperDir}/qemu-system-*`, 'emulator wrappers (written by install)'],
        [m.paths.manifest, 'what install wrote, for uninstall and refresh'],
        ['/run/virt-ebpf/broker.sock', "the broker's socket"],
        ['/var/cache/virt-ebpf/probe', "the broker's probe cache"],
        [`${m.paths.unitDir}/virt-ebpfd.socket, virt-ebpfd.service`, 'the systemd units'],
      ] as const
    ).flatMap(([f, what]) => ['.TP', `.I ${roff(f)}`, roff(what)]),
    '.SH ENVIRONMENT',
    '.TP',
    '.B VIRT_EBPF_DEBUG',
    roff('set to 1: errors also print their detail (verifier log, stderr) and stack.'),
    '.SH EXIT STATUS',
    roff('0 on success, 1 on failure, 2 on a usage error; doctor exits 1 when a needed check fails.'),
    '.SH SEE ALSO',
    '.BR libvirtd (8),',
    '.BR virsh (1),',
    '.BR qemu\\-system\\-x86_64 (1),',
    '.BR systemd.exec (5)',
    '',
  );
  return lines.join('\n');
}

/** The options a usage line names (`--flag`, `--opt VALUE`). */
export function usageOptions(usage: string): string[] {
  return [...new Set([...usage.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]))];
}

export function bashCompletion(commands: Record<string, Command>): string {
  const names = Object.keys(commands);
  const cases = names
    .map((n) => {
      const opts = usageOptions(commands[n].usage);
      return opts.length ? `    ${n}) opts='${opts.join(' ')}' ;;` : '';
    })
    .filter(Boolean);
  return [
    '# bash completion for virt-ebpf (made from its usage text when the package is built)',
    '_virt_ebpf() {',
    '  local cur=${COMP_WORDS[COMP_CWORD]} opts=',
    '  if [ "$COMP_CWORD" -eq 1 ]; then',
    `    COMPREPLY=($(compgen -W '${names.join(' ')} help' -- "$cur"))`,
    '    return',
    '  fi',
    '  case ${COMP_WORDS[1]} in',
    ...cases,
    '  esac',
    '  if [[ $cur == -* ]]; then',
    '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
    '  else',
    '    COMPREPLY=($(compgen -f -- "$cur"))',
    '  fi',
    '}',
    'complete -F _virt_ebpf virt-ebpf',
    '',
  ].join('\n');
}
