/**
 * Who to run as: resolve a user name (through NSS, like `id` does) to uid, primary gid and
 * supplementary groups.
 */
import koffi from './koffi';
import { VirtEbpfError } from '../errors';

const libc = koffi.load('libc.so.6');
const passwd = koffi.struct('passwd', {
  pw_name: 'const char *',
  pw_passwd: 'const char *',
  pw_uid: 'uint32',
  pw_gid: 'uint32',
  pw_gecos: 'const char *',
  pw_dir: 'const char *',
  pw_shell: 'const char *',
});
const getpwnam = libc.func('passwd *getpwnam(const char *)');
const getpwuid = libc.func('passwd *getpwuid(uint32)');
const getgrouplist = libc.func('int getgrouplist(const char *, uint32, _Inout_ uint32 *groups, _Inout_ int *ngroups)');

export interface Account {
  name: string;
  uid: number;
  gid: number;
  groups: number[];
  home: string;
}

export function lookupUser(nameOrUid: string): Account {
  const ptr = /^\d+$/.test(nameOrUid) ? getpwuid(Number(nameOrUid)) : getpwnam(nameOrUid);
  if (!ptr) {
    throw new VirtEbpfError('NO_SUCH_USER', `no such user: ${nameOrUid}`, {
      remedy: 'name an existing account (e.g. libvirt-qemu), or create it first',
    });
  }
  const pw = koffi.decode(ptr, passwd) as { pw_name: string; pw_uid: number; pw_gid: number; pw_dir: string };
  let groups: number[] = [];
  for (let size = 32; size <= 65536; size *= 4) {
    const buf = new Uint32Array(size);
    const n = [size];
    if (getgrouplist(pw.pw_name, pw.pw_gid, buf, n) >= 0) {
      groups = Array.from(buf.subarray(0, n[0]));
      break;
    }
  }
  return { name: pw.pw_name, uid: pw.pw_uid, gid: pw.pw_gid, groups, home: pw.pw_dir };
}
