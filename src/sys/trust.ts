/**
 * "Never run a binary a non-root user could have replaced": a path is trusted when the file
 * and every directory above it (after resolving links) is owned by root and not writable by
 * group or others (sticky /tmp-like dirs are refused too).
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { VirtEbpfError } from '../errors';

export type TrustSubject = 'emulator' | 'helper';

export function untrustedReason(path: string): string | null {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    return `${path} does not exist`;
  }
  for (let p = real; ; p = dirname(p)) {
    const st = statSync(p);
    if (st.uid !== 0) return `${p} is owned by uid ${st.uid}, not root`;
    if ((st.mode & 0o022) !== 0) return `${p} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`;
    if (p === '/') break;
  }
  return null;
}

/** Returns the resolved path when trusted; throws EMULATOR_UNTRUSTED / HELPER_UNTRUSTED otherwise. */
export function assertTrustedExecutable(path: string, subject: TrustSubject): string {
  const reason = untrustedReason(path);
  if (reason !== null) {
    throw new VirtEbpfError(subject === 'emulator' ? 'EMULATOR_UNTRUSTED' : 'HELPER_UNTRUSTED', `refusing to run ${subject} ${path}: ${reason}`, {
      remedy: `install the ${subject} root-owned and not group/world-writable (chown root:root; chmod go-w), including its directories`,
      fields: { path },
    });
  }
  return realpathSync(path);
}
