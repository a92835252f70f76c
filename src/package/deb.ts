/**
 * The Debian package's metadata, as text: control, copyright and changelog. Pure: the build
 * (build.ts) gathers the facts and writes the files.
 */

export const PACKAGE = 'virt-ebpf';

/**
 * Runtime dependencies: the distribution's Node (>= 20), libbpf (loaded through koffi), a QEMU
 * that can take eBPF RSS fds (>= 9.0), and libvirt's daemon with its hook directory.
 */
export const DEPENDS = ['nodejs (>= 20)', 'libbpf1', 'qemu-system-x86 (>= 1:9.0)', 'libvirt-daemon-system'];

/**
 * The C library the hot-plug shim and koffi's native module link against, at the newest symbol
 * version they use (what dpkg-shlibdeps would find), from their GLIBC_x.y version needs.
 */
export function libcDepends(binaries: Buffer[]): string {
  let best = [2, 2];
  for (const b of binaries) {
    for (const m of b.toString('latin1').matchAll(/GLIBC_(\d+)\.(\d+)/g)) {
      const v = [Number(m[1]), Number(m[2])];
      if (v[0] > best[0] || (v[0] === best[0] && v[1] > best[1])) best = v;
    }
  }
  return `libc6 (>= ${best[0]}.${best[1]})`;
}

export interface ControlFacts {
  version: string;
  /** the libc6 dependency (libcDepends) */
  libc: string;
  arch: string;
  maintainer: string;
  installedSizeKiB: number;
  description: string;
}

export function controlFile(c: ControlFacts): string {
  const [summary, ...rest] = c.description.split('\n');
  const body = rest.map((l) => (l.trim() === '' ? ' .' : ` ${l}`));
  return [
    `Package: ${PACKAGE}`,
    `Version: ${c.version}`,
    `Architecture: ${c.arch}`,
    `Maintainer: ${c.maintainer}`,
    `Installed-Size: ${c.installedSizeKiB}`,
    `Depends: ${[c.libc, ...DEPENDS].join(', ')}`,
    'Section: admin',
    'Priority: optional',
    `Description: ${summary}`,
    ...body,
    '',
  ].join('\n');
}

export const DESCRIPTION = [
  'virtio-net eBPF RSS for unprivileged QEMU under libvirt',
  'A root broker (virt-ebpfd) probes each QEMU, loads its RSS eBPF program',
  'with privileges and hands the program and map fds to the unprivileged QEMU',
  'that libvirt starts: at start through an emulator wrapper and a libvirt',
  'hook, at hot-plug through a small shim inside QEMU.',
  '',
  'Installing the package runs `virt-ebpf install` (hook, wrappers, config);',
  'removing it runs `virt-ebpf uninstall`.',
].join('\n');

export interface BundledModule {
  name: string;
  version: string;
  license: string;
}

/** debian/copyright in the machine-readable format: ours, then every bundled Node module. */
export function copyrightFile(license: string, modules: BundledModule[]): string {
  const out = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    `Upstream-Name: ${PACKAGE}`,
    '',
    'Files: *',
    'Copyright: the virt-ebpf developers',
    `License: ${license}`,
    '',
  ];
  for (const m of [...modules].sort((a, b) => a.name.localeCompare(b.name))) {
    out.push(`Files: usr/lib/virt-ebpf/node_modules/${m.name}/*`, `Copyright: the authors of ${m.name} ${m.version}`, `License: ${m.license}`, '');
  }
  const licenses = new Set([license, ...modules.flatMap((m) => m.license.replace(/[()]/g, '').split(/\s+OR\s+/))]);
  for (const l of [...licenses].sort()) {
    const common: Record<string, string> = {
      'GPL-2.0-or-later': '/usr/share/common-licenses/GPL-2',
      'CC0-1.0': '/usr/share/common-licenses/CC0-1.0',
    };
    out.push(`License: ${l}`, common[l] ? ` On Debian systems the full text is in ${common[l]}.` : ` The full text is in the module's own license file under /usr/lib/virt-ebpf/node_modules.`, '');
  }
  return out.join('\n');
}

/** A one-entry Debian changelog for this version (the package is native: no upstream tarball). */
export function changelogFile(version: string, maintainer: string, date: Date): string {
  return [`${PACKAGE} (${version}) unstable; urgency=medium`, '', `  * Package of virt-ebpf ${version}.`, '', ` -- ${maintainer}  ${date.toUTCString().replace('GMT', '+0000')}`, ''].join('\n');
}
