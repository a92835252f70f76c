/**
 * The command-line edges of the manager entry points, each called the way its manager calls a
 * hook:
 *
 *   virt-ebpf kubevirt-sidecar onDefineDomain --vmi JSON --domain XML   (stdout: the domain XML)
 *   virt-ebpf vdsm before_vm_start|before_nic_hotplug                  (edits $_hook_domxml)
 *
 * templates/kubevirt/onDefineDomain and templates/vdsm/POINT/50_virt_ebpf are the executables
 * the managers find; they exec these.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';
import { replaceAtomically } from '../sys/atomic';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import { parseArgs } from '../options';
import { DEFAULT_WRAPPER_DIR, report, type CommandResult } from '../xml';
import type { ManagerResult } from './common';
import { HOOK_POINT, onDefineDomain, VIRT_LAUNCHER_EMULATOR } from './kubevirt';
import { KUBEVIRT_USAGE, VDSM_USAGE } from './usage';
import { readProperties, runVdsmPoint, VDSM_EMULATOR, VDSM_HOOK_POINTS, type VdsmHookPoint } from './vdsm';


const OPTIONS = ['wrapper-dir', 'default-emulator'];

function usage(message: string, remedy: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', message, { remedy });
}

const asKubevirt = `run it as KubeVirt's sidecar-shim does: ${KUBEVIRT_USAGE}`;
const asVdsm = `run it as VDSM runs hooks: ${VDSM_USAGE}, from /usr/libexec/vdsm/hooks/POINT/ with $_hook_domxml naming the XML file`;

function lines(r: ManagerResult): string {
  return report(r.changes, r.warnings) + `virt-ebpf: ${r.why}\n`;
}

/** Runs `body`; a VirtEbpfError becomes its one line on stderr and `codeOf(error)`. */
function guarded(body: () => CommandResult, codeOf: (e: VirtEbpfError) => number): CommandResult {
  try {
    return body();
  } catch (e) {
    if (isVirtEbpfError(e)) return { stdout: '', stderr: e.oneLine() + '\n', code: codeOf(e) };
    throw e;
  }
}

/** `virt-ebpf kubevirt-sidecar onDefineDomain --vmi JSON --domain XML`: exit 0 with the domain on stdout, 1 refused, 2 bad usage. */
export function runKubevirtSidecar(argv: string[]): CommandResult {
  return guarded(
    () => {
      const [point, ...rest] = argv;
      if (point === '--help' || point === '-h') return { stdout: `usage: ${KUBEVIRT_USAGE}\n`, stderr: '', code: 0 };
      if (point === undefined) throw usage('kubevirt-sidecar: no hook point given', asKubevirt);
      if (point !== HOOK_POINT) throw usage(`kubevirt-sidecar: unknown hook point "${point}" (only ${HOOK_POINT} is implemented)`, asKubevirt);
      const a = parseArgs(rest, { values: ['vmi', 'domain', ...OPTIONS] }, 'kubevirt-sidecar');
      if (a.positional.length || a.rest.length) throw usage(`kubevirt-sidecar: unexpected argument "${[...a.positional, ...a.rest][0]}"`, asKubevirt);
      const vmi = a.values.get('vmi');
      const domain = a.values.get('domain');
      if (vmi === undefined || domain === undefined) throw usage(`kubevirt-sidecar: ${HOOK_POINT} needs --vmi and --domain`, asKubevirt);
      const r = onDefineDomain(vmi, domain, {
        wrapperDir: a.values.get('wrapper-dir') ?? DEFAULT_WRAPPER_DIR,
        defaultEmulator: a.values.get('default-emulator') ?? VIRT_LAUNCHER_EMULATOR,
      });
      return { stdout: r.xml, stderr: lines(r), code: 0 };
    },
    (e) => (e.code === 'USAGE' ? 2 : 1),
  );
}

/**
 * `virt-ebpf vdsm POINT` with VDSM's environment. Exit 0: done (the file holds the result).
 * 1: refused, with one line on stderr; the file is unchanged and VDSM fails the operation after
 * its other hooks ran. 2: the hook is not run the way VDSM runs hooks (no readable
 * `$_hook_domxml`, an unknown hook point), so the later hooks are stopped too.
 */
export function runVdsmHook(argv: string[], env: Record<string, string | undefined>): CommandResult {
  return guarded(
    () => {
      const [point, ...rest] = argv;
      if (point === '--help' || point === '-h') return { stdout: `usage: ${VDSM_USAGE}\n`, stderr: '', code: 0 };
      if (!VDSM_HOOK_POINTS.includes(point as VdsmHookPoint)) {
        throw usage(`vdsm: ${point === undefined ? 'no hook point given' : `unknown hook point "${point}"`} (one of ${VDSM_HOOK_POINTS.join(', ')})`, asVdsm);
      }
      const a = parseArgs(rest, { values: OPTIONS }, 'vdsm');
      if (a.positional.length || a.rest.length) throw usage(`vdsm: unexpected argument "${[...a.positional, ...a.rest][0]}"`, asVdsm);
      const file = env._hook_domxml;
      if (!file) throw usage(`vdsm ${point}: $_hook_domxml is not set`, asVdsm);
      // A VM that did not ask is passed by before its file is even read.
      const settings = readProperties(env);
      if (settings.rss !== 'on') return { stdout: '', stderr: '', code: 0 };
      const { xml, stat } = readHookFile(file, point);
      const r = runVdsmPoint(point as VdsmHookPoint, xml, env, {
        wrapperDir: a.values.get('wrapper-dir') ?? DEFAULT_WRAPPER_DIR,
        defaultEmulator: a.values.get('default-emulator') ?? VDSM_EMULATOR,
      });
      if (r.changed) replaceFile(file, r.xml, stat);
      return { stdout: '', stderr: lines(r), code: 0 };
    },
    (e) => (e.code === 'USAGE' ? 2 : 1),
  );
}

/** $_hook_domxml, read through one fd opened without following a symlink: a regular file only. */
function readHookFile(file: string, point: string): { xml: string; stat: Stats } {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    throw usage(`vdsm ${point}: cannot read $_hook_domxml ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, asVdsm);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw usage(`vdsm ${point}: $_hook_domxml ${file} is not a regular file`, asVdsm);
    return { xml: readFileSync(fd, 'utf8'), stat };
  } finally {
    closeSync(fd);
  }
}

/** Replaces `file`'s content all at once, keeping its mode and (as root) its owner; on failure the file is as it was. */
function replaceFile(file: string, content: string, was: Stats): void {
  try {
    replaceAtomically(file, content, { mode: was.mode & 0o7777, ...(process.geteuid?.() === 0 ? { owner: { uid: was.uid, gid: was.gid } } : {}), fsync: true });
  } catch (e) {
    throw new VirtEbpfError('MANAGER_INPUT', `cannot write the new XML over ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
      remedy: 'the hook needs to create a file beside $_hook_domxml (VDSM makes it in its temporary directory): check that directory\'s permissions and free space',
      cause: e,
    });
  }
}
