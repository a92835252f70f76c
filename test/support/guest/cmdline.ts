/**
 * The guest fixture's kernel command line (protocol: scripts/guest/README.md). Pure.
 */
import { VirtEbpfError } from '../../../src/errors';

/** What scripts/guest/init runs when no vebpf.script is given (a unit test keeps them equal). */
export const DEFAULT_SCRIPT: readonly string[] = [
  '@channels vebpf_maxq eth0',
  '@set-equal ethtool -X eth0 equal 2',
  '@show-equal ethtool -x eth0',
  '@set-weight ethtool -X eth0 weight 3 1',
  '@show-weight ethtool -x eth0',
  '@stats ethtool -S eth0',
];

export interface GuestCmdlineOptions {
  /** Protocol lines ("[@label ]command") replacing the default script; [] runs nothing. */
  script?: readonly string[];
  /** After the script: serve console commands (default) or power off. */
  then?: 'shell' | 'poweroff';
  /** Address for eth0, e.g. "10.0.0.2/30". */
  ip?: string;
  /** Kernel console device (default ttyS0). */
  console?: string;
  /** Further kernel parameters, appended as they are. */
  extra?: readonly string[];
}

/** x86's COMMAND_LINE_SIZE, including the terminating NUL. */
const MAX_CMDLINE = 2047;
const LABEL = /^[A-Za-z0-9_.:-]+$/;

function usage(message: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', message, { remedy: 'fix the guest fixture options in the calling test' });
}

export function checkProtocolLine(line: string): void {
  if (/[\r\n]/.test(line)) throw usage(`guest command contains a newline: ${JSON.stringify(line)}`);
  if (line.startsWith('@')) {
    const label = line.slice(1).split(' ', 1)[0];
    if (!LABEL.test(label)) throw usage(`guest command label "${label}" must match ${LABEL}`);
  }
}

export function guestCmdline(opts: GuestCmdlineOptions = {}): string {
  const parts = [`console=${opts.console ?? 'ttyS0'}`, 'panic=1'];
  if (opts.script !== undefined) {
    opts.script.forEach(checkProtocolLine);
    // base64 keeps spaces, quotes and '=' away from the kernel's own parameter parsing.
    const text = opts.script.length === 0 ? '# nothing' : opts.script.join('\n');
    parts.push(`vebpf.script=${Buffer.from(text + '\n').toString('base64')}`);
  }
  if (opts.then !== undefined) parts.push(`vebpf.then=${opts.then}`);
  if (opts.ip !== undefined) {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(opts.ip)) throw usage(`guest ip "${opts.ip}" is not an IPv4 address with /prefix`);
    parts.push(`vebpf.ip=${opts.ip}`);
  }
  for (const e of opts.extra ?? []) {
    if (/\s/.test(e)) throw usage(`kernel parameter "${e}" contains whitespace`);
    parts.push(e);
  }
  const line = parts.join(' ');
  if (line.length > MAX_CMDLINE) throw usage(`guest kernel command line is ${line.length} bytes, the limit is ${MAX_CMDLINE}; shorten the script`);
  return line;
}
