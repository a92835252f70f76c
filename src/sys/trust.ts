/**
 * "Never run a binary a non-root user could have replaced": a path is trusted when the file
 * and every directory above it (after resolving links) is owned by root and not writable by
 * group or others (sticky /tmp-like dirs are refused too).
 */
import { realpathSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { ErrorCode, VirtEbpfError } from '../errors';

export type TrustSubject = 'emulator' | 'helper' | 'node' | 'prefix';

/** What each subject is called in the refusal, and its error code. */
const SUBJECTS: Record<TrustSubject, { code: ErrorCode; refusal: string; remedy: string }> = {
  emulator: { code: 'EMULATOR_UNTRUSTED', refusal: 'refusing to run emulator', remedy: 'install the emulator root-owned and not group/world-writable' },
  helper: { code: 'HELPER_UNTRUSTED', refusal: 'refusing to run helper', remedy: 'install the helper root-owned and not group/world-writable' },
  node: { code: 'INSTALL_UNTRUSTED', refusal: 'refusing to install: the hook and the broker would run node', remedy: 'run install with a node that is root-owned and not group/world-writable (e.g. the distribution\'s /usr/bin/node)' },
  prefix: { code: 'INSTALL_UNTRUSTED', refusal: 'refusing to install: root would run code from the prefix', remedy: 'install into a root-owned directory that is not group/world-writable (default /usr/lib/virt-ebpf)' },
};

/** The resolved path of a trusted file and its stat; or why it is not trusted. */
function trustOf(path: string): { real: string; stat: Stats } | { reason: string } {
  let real: string;
  try {
    real = realpathSync.native(path);
  } catch {
    return { reason: `${path} does not exist` };
  }
  let stat: Stats | undefined;
  for (let p = real; ; p = dirname(p)) {
    const st = statSync(p);
    stat ??= st;
    if (st.uid !== 0) return { reason: `${p} is owned by uid ${st.uid}, not root` };
    if ((st.mode & 0o022) !== 0) return { reason: `${p} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})` };
    if (p === '/') break;
  }
  return { real, stat };
}

export function untrustedReason(path: string): string | null {
  const t = trustOf(path);
  return 'reason' in t ? t.reason : null;
}

/**
 * A trusted file's resolved path and its stat (taken in the check, so a caller keying on the
 * file's identity needs no second look); throws the subject's *_UNTRUSTED error otherwise.
 */
export function trustedFile(path: string, subject: TrustSubject): { real: string; stat: Stats } {
  const t = trustOf(path);
  if ('reason' in t) {
    const s = SUBJECTS[subject];
    throw new VirtEbpfError(s.code, `${s.refusal} ${path}: ${t.reason}`, {
      remedy: `${s.remedy} (chown root:root; chmod go-w), including its directories`,
      fields: { path },
    });
  }
  return t;
}

/** Returns the resolved path when trusted; throws the subject's *_UNTRUSTED error otherwise. */
export function assertTrustedExecutable(path: string, subject: TrustSubject): string {
  return trustedFile(path, subject).real;
}
