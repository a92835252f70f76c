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
import { closeSync, constants, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import { parseArgs } from '../options';
import { DEFAULT_WRAPPER_DIR, report, type CommandResult } from '../xml';
import type { ManagerResult } from './common';
import { HOOK_POINT, onDefineDomain, VIRT_LAUNCHER_EMULATOR } from './kubevirt';
import { KUBEVIRT_USAGE, VDSM_USAGE } from './usage';
import { runVdsmPoint, VDSM_EMULATOR, VDSM_HOOK_POINTS, type VdsmHookPoint } from './vdsm';


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
      if (point === undefined || point === '--help' || point === '-h') return { stdout: `usage: ${KUBEVIRT_USAGE}\n`, stderr: '', code: point === undefined ? 2 : 0 };
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
      let xml: string;
      try {
        xml = readFileSync(file, 'utf8');
      } catch (e) {
        throw usage(`vdsm ${point}: cannot read $_hook_domxml ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, asVdsm);
      }
      const r = runVdsmPoint(point as VdsmHookPoint, xml, env, {
        wrapperDir: a.values.get('wrapper-dir') ?? DEFAULT_WRAPPER_DIR,
        defaultEmulator: a.values.get('default-emulator') ?? VDSM_EMULATOR,
      });
      if (r.changed) replaceFile(file, r.xml);
      return { stdout: '', stderr: lines(r), code: 0 };
    },
    (e) => (e.code === 'USAGE' ? 2 : 1),
  );
}

/** Replaces `file`'s content all at once (a temp file beside it, renamed over it), keeping its mode; on failure the file is as it was. */
function replaceFile(file: string, content: string): void {
  const tmp = join(dirname(file), `.${basename(file)}.virt-ebpf-${process.pid}`);
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, statSync(file).mode & 0o7777);
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw new VirtEbpfError('MANAGER_INPUT', `cannot write the new XML over ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
      remedy: 'give the hook write access to the directory of $_hook_domxml (VDSM creates it in its temporary directory)',
      cause: e,
    });
  }
}
