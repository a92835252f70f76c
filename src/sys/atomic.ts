/**
 * Replacing a file's content all at once: a fresh file beside it (a random name, created with
 * O_EXCL and O_NOFOLLOW, so nothing already there is reused or followed), written whole, then
 * renamed over the target. A reader sees the old content or the new, never a part. The fresh
 * file is removed again on failure — only if this call created it.
 */
import { closeSync, constants, fchmodSync, fchownSync, fsyncSync, openSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export interface ReplaceOptions {
  /** permission bits of the new file (set with fchmod: the umask does not apply) */
  mode: number;
  /** owner of the new file (root only) */
  owner?: { uid: number; gid: number };
  /** fsync before the rename (the content must survive a crash) */
  fsync?: boolean;
}

/** Replaces `file` with `content`; throws the system error, leaving `file` as it was. */
export function replaceAtomically(file: string, content: string | Buffer, opts: ReplaceOptions): void {
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    try {
      writeFileSync(fd, content); // loops over short writes
      if (opts.owner) fchownSync(fd, opts.owner.uid, opts.owner.gid);
      fchmodSync(fd, opts.mode);
      if (opts.fsync) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* renamed already, or gone */
    }
    throw e;
  }
}
