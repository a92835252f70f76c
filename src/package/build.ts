/**
 * `npm run package`: build dist/virt-ebpf_<version>_<arch>.deb with dpkg-deb from the built
 * checkout (run `npm run build` first; nothing is fetched). The package holds
 *   /usr/lib/virt-ebpf            the runtime (as `virt-ebpf install` copies it), marked `package`
 *   /usr/sbin/virt-ebpf           the command (templates/launcher with the distribution's node)
 *   /usr/lib/systemd/system/      the units, rendered for /usr/lib/virt-ebpf
 *   /usr/share/man/man8/virt-ebpf.8.gz, /usr/share/bash-completion/completions/virt-ebpf
 *                                 made from the CLI's own usage text (src/cli/docs.ts)
 *   /usr/share/doc/virt-ebpf/     copyright (every bundled Node module), changelog
 *   /usr/share/lintian/overrides/virt-ebpf  packaging/deb/lintian-overrides
 * and packaging/deb/{preinst,postinst,prerm,postrm}. Binaries are stripped as dh_strip would.
 * See docs/packaging.md.
 */
import { chmodSync, copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { COMMANDS } from '../cli/commands';
import { bashCompletion, manPage } from '../cli/docs';
import { DEFAULT_PATHS, UNIT_FILES, fill, templateVars } from '../install/plan';
import { copyRuntimeParts, DEFAULT_PREFIX, markerText, PREFIX_MARKER, sourceRoot } from '../install/runtime';
import { BUILT_C_FILES } from '../install/host';
import { BundledModule, changelogFile, controlFile, copyrightFile, DESCRIPTION, libcDepends, PACKAGE } from './deb';

/** The distribution's node: what the packaged command, hook and unit run. */
export const PACKAGED_NODE = '/usr/bin/node';
export const MAINTAINER_SCRIPTS = ['preinst', 'postinst', 'prerm', 'postrm'];
/** dpkg architecture → Node's process.arch (koffi's build directory is named after it). */
const NODE_ARCH: Record<string, string> = { amd64: 'x64', arm64: 'arm64' };

function write(path: string, content: string | Buffer, mode = 0o644): void {
  mkdirSync(join(path, '..'), { recursive: true, mode: 0o755 });
  writeFileSync(path, content, { mode });
  chmodSync(path, mode);
}

/** du -sk of a tree, as dpkg counts Installed-Size (KiB, rounded up per file). */
function sizeKiB(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    total += e.isDirectory() ? sizeKiB(p) + 4 : Math.ceil(statSync(p).size / 1024);
  }
  return total;
}

/** The top-level packages of a node_modules tree, with their licenses. */
function bundledModules(modules: string): BundledModule[] {
  const out: BundledModule[] = [];
  const visit = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (name.startsWith('@')) visit(p);
      else if (existsSync(join(p, 'package.json'))) {
        const j = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8')) as { name: string; version: string; license?: string };
        out.push({ name: j.name, version: j.version, license: j.license ?? 'UNKNOWN' });
        if (existsSync(join(p, 'node_modules'))) visit(join(p, 'node_modules'));
      }
    }
  };
  visit(modules);
  return out;
}

function findFiles(dir: string, want: (f: string) => boolean): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? findFiles(join(dir, e.name), want) : want(e.name) ? [join(dir, e.name)] : []));
}

/** Remove the directories the build left empty (dpkg would install them as ours). */
function pruneEmpty(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) pruneEmpty(join(dir, e.name));
  if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
}

export function buildDeb(opts: { from?: string; outDir?: string; date?: Date } = {}): string {
  const from = opts.from ?? sourceRoot();
  const outDir = opts.outDir ?? join(from, 'dist');
  const date = opts.date ?? new Date(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000) * 1000);
  const pkg = JSON.parse(readFileSync(join(from, 'package.json'), 'utf8')) as { version: string; license: string };
  const arch = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim();
  if (!NODE_ARCH[arch]) throw new Error(`dpkg architecture ${arch} has no koffi build mapping (known: ${Object.keys(NODE_ARCH).join(', ')})`);
  const maintainer = `${process.env.DEBFULLNAME ?? 'virt-ebpf developers'} <${process.env.DEBEMAIL ?? 'virt-ebpf@example.org'}>`;
  const stage = join(outDir, 'deb-root');
  rmSync(stage, { recursive: true, force: true });

  const prefix = join(stage, DEFAULT_PREFIX);
  write(join(prefix, PREFIX_MARKER), markerText('package'));
  copyRuntimeParts(from, prefix, [`linux_${NODE_ARCH[arch]}`]);
  pruneEmpty(prefix);
  const binaries = [...BUILT_C_FILES.map((f) => join(prefix, f)), ...findFiles(join(prefix, 'node_modules'), (f) => f.endsWith('.node'))];
  for (const b of binaries) execFileSync('strip', ['--remove-section=.comment', '--remove-section=.note', ...(b.endsWith('.so') || b.endsWith('.node') ? ['--strip-unneeded'] : []), b]);
  chmodSync(join(prefix, 'dist/src/cli/main.js'), 0o755); // it has a #! line

  const vars = templateVars(PACKAGED_NODE, DEFAULT_PREFIX, DEFAULT_PATHS);
  const template = (name: string) => fill(readFileSync(join(from, 'templates', name), 'utf8'), vars);
  write(join(stage, 'usr/sbin/virt-ebpf'), template('launcher'), 0o755);
  for (const unit of UNIT_FILES) write(join(stage, 'usr/lib/systemd/system', unit), template(unit));

  const day = date.toISOString().slice(0, 10);
  const man = manPage(COMMANDS, { version: pkg.version, date: day, prefix: DEFAULT_PREFIX, paths: { ...DEFAULT_PATHS, unitDir: '/usr/lib/systemd/system', launcher: '/usr/sbin/virt-ebpf' } });
  write(join(stage, 'usr/share/man/man8/virt-ebpf.8.gz'), gzipSync(man, { level: 9 }));
  write(join(stage, 'usr/share/bash-completion/completions/virt-ebpf'), bashCompletion(COMMANDS));
  const doc = join(stage, 'usr/share/doc', PACKAGE);
  write(join(doc, 'copyright'), copyrightFile(pkg.license, bundledModules(join(prefix, 'node_modules'))));
  // A native package (no Debian revision): its changelog is changelog.gz.
  write(join(doc, 'changelog.gz'), gzipSync(changelogFile(pkg.version, maintainer, date), { level: 9 }));
  write(join(stage, 'usr/share/lintian/overrides', PACKAGE), readFileSync(join(from, 'packaging/deb/lintian-overrides')));

  const control = join(stage, 'DEBIAN');
  mkdirSync(control, { mode: 0o755 });
  for (const s of MAINTAINER_SCRIPTS) {
    copyFileSync(join(from, 'packaging/deb', s), join(control, s));
    chmodSync(join(control, s), 0o755);
  }
  write(join(control, 'control'), controlFile({ version: pkg.version, libc: libcDepends(binaries.map((b) => readFileSync(b))), arch, maintainer, installedSizeKiB: sizeKiB(stage) - sizeKiB(control), description: DESCRIPTION }));
  // Owned by root, writable by root alone, whatever this checkout's modes are.
  execFileSync('chmod', ['-R', 'u=rwX,go=rX', stage]);

  const deb = join(outDir, `${PACKAGE}_${pkg.version}_${arch}.deb`);
  rmSync(deb, { force: true });
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', stage, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  rmSync(stage, { recursive: true, force: true });
  return deb;
}

if (require.main === module) {
  try {
    process.stdout.write(`${buildDeb()}\n`);
  } catch (e) {
    process.stderr.write(`virt-ebpf package: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
