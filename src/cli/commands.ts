/**
 * The subcommands: each parses its options and calls into its concept's folder.
 */
import { BROKER_SUMMARY, BROKER_USAGE } from '../broker/usage';
import { DOCTOR_SUMMARY, DOCTOR_USAGE } from '../doctor/usage';
import { PROBE_SUMMARY, PROBE_USAGE } from '../emulator/usage';
import { EXEC_SUMMARY, EXEC_USAGE } from '../exec/usage';
import { INSTALL_SUMMARY, INSTALL_USAGE, REFRESH_SUMMARY, REFRESH_USAGE, UNINSTALL_SUMMARY, UNINSTALL_USAGE } from '../install/usage';
import { DOMAIN_COMMAND_SUMMARY, DOMAIN_COMMAND_USAGE } from '../libvirt/usage';
import { KUBEVIRT_SUMMARY, KUBEVIRT_USAGE, VDSM_SUMMARY, VDSM_USAGE } from '../managers/usage';
import { MIGRATE_SUMMARY, MIGRATE_USAGE } from '../migrate/usage';
import { STATUS_SUMMARY, STATUS_USAGE } from '../status/usage';
import { VERIFY_SUMMARY, VERIFY_USAGE } from '../verify/usage';
import { XML_SUMMARY, XML_USAGE } from '../xml/usage';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { parseArgs } from '../options';
import { VirtEbpfError } from '../errors';

export interface Command {
  summary: string;
  usage: string;
  run(argv: string[]): Promise<number>;
}

function defaultCacheDir(): string {
  if (process.getuid?.() === 0) return '/var/cache/virt-ebpf/probe';
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'virt-ebpf', 'probe');
}

export const COMMANDS: Record<string, Command> = {
  probe: {
    summary: PROBE_SUMMARY,
    usage: PROBE_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['json', 'no-cache'], values: ['cache-dir'] }, 'probe');
      const { probeEmulator, listEmulatorsOnPath, formatProbeTable } = await import('../emulator');
      const paths = a.positional.length ? a.positional : listEmulatorsOnPath();
      if (paths.length === 0) {
        throw new VirtEbpfError('EMULATOR_NOT_FOUND', 'no qemu-system-* on PATH', { remedy: 'install QEMU (apt-get install -t bookworm-backports qemu-system-x86) or name the emulator' });
      }
      const rows = [];
      let failed = 0;
      for (const p of paths) {
        try {
          const r = await probeEmulator(p, { cacheDir: a.values.get('cache-dir') ?? defaultCacheDir(), useCache: !a.flags.has('no-cache') });
          rows.push(r.caps);
          if (!r.caps.supported) failed++;
        } catch (e) {
          if (paths.length === 1) throw e;
          failed++;
          process.stderr.write(`${(e as VirtEbpfError).oneLine?.() ?? String(e)}\n`);
        }
      }
      if (a.flags.has('json')) {
        process.stdout.write(JSON.stringify(rows.map(({ rssObject: _omit, ...rest }) => rest), null, 2) + '\n');
      } else {
        process.stdout.write(formatProbeTable(rows) + '\n');
      }
      return failed === paths.length ? 1 : 0;
    },
  },
  exec: {
    summary: EXEC_SUMMARY,
    usage: EXEC_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['verbose'], values: ['user', 'cache-dir'] }, 'exec');
      const command = [...a.positional, ...a.rest];
      const { execEmulator } = await import('../exec');
      await execEmulator({ user: a.values.get('user'), command, cacheDir: a.values.get('cache-dir') ?? defaultCacheDir(), verbose: a.flags.has('verbose') });
      return 0; // not reached: exec replaced this process
    },
  },
  xml: {
    summary: XML_SUMMARY,
    usage: XML_USAGE,
    async run(argv) {
      const { runXmlCommand } = await import('../xml');
      return writeResult(runXmlCommand(argv, () => readFileSync(0, 'utf8')));
    },
  },
  'kubevirt-sidecar': {
    summary: KUBEVIRT_SUMMARY,
    usage: KUBEVIRT_USAGE,
    async run(argv) {
      const { runKubevirtSidecar } = await import('../managers');
      return writeResult(runKubevirtSidecar(argv));
    },
  },
  vdsm: {
    summary: VDSM_SUMMARY,
    usage: VDSM_USAGE,
    async run(argv) {
      const { runVdsmHook } = await import('../managers');
      return writeResult(runVdsmHook(argv, process.env));
    },
  },
  broker: {
    summary: BROKER_SUMMARY,
    usage: BROKER_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { values: ['config'] }, 'broker');
      if (process.getuid?.() !== 0) {
        throw new VirtEbpfError('NOT_ROOT', 'the broker must run as root (it loads eBPF)', { remedy: 'run it as root, or use the systemd unit virt-ebpfd.socket' });
      }
      const { loadConfig } = await import('../broker/config');
      const { startBroker } = await import('../broker/daemon');
      const broker = await startBroker(loadConfig(a.values.get('config')));
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      await broker.close();
      return 0;
    },
  },
  ...Object.fromEntries(
    (['enable', 'disable', 'define'] as const).map((name) => [
      name,
      {
        summary: DOMAIN_COMMAND_SUMMARY[name],
        usage: DOMAIN_COMMAND_USAGE[name],
        async run(argv: string[]) {
          const { runDomainCommand } = await import('../libvirt');
          const r = runDomainCommand(name, argv);
          process.stdout.write(r.stdout);
          process.stderr.write(r.stderr);
          return r.code;
        },
      } satisfies Command,
    ]),
  ),
  migrate: {
    summary: MIGRATE_SUMMARY,
    usage: MIGRATE_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { values: ['connect'] }, 'migrate');
      const { migrateDomain } = await import('../migrate');
      if (a.positional.length !== 2) throw new VirtEbpfError('USAGE', 'migrate: name the domain and the destination URI', { remedy: `usage: ${MIGRATE_USAGE}` });
      const [name, destUri] = a.positional;
      return migrateDomain({ uri: a.values.get('connect') ?? 'qemu:///system', name, destUri, options: a.rest }, (line) => process.stderr.write(line + '\n'));
    },
  },
  install: {
    summary: INSTALL_SUMMARY,
    usage: INSTALL_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['no-rescan', 'host-wide', 'no-host-wide', 'hook', 'no-hook'], values: ['prefix'] }, 'install');
      if (a.flags.has('host-wide') && a.flags.has('no-host-wide')) throw new VirtEbpfError('USAGE', 'install: --host-wide and --no-host-wide together', { remedy: 'give one of them' });
      if (a.flags.has('hook') && a.flags.has('no-hook')) throw new VirtEbpfError('USAGE', 'install: --hook and --no-hook together', { remedy: 'give one of them' });
      requireRoot('install');
      const { assertPrefixWritable, copyRuntime, readMarker, sourceRoot, DEFAULT_PREFIX } = await import('../install/runtime');
      const { chooseEmulators, hostFacts } = await import('../install/host');
      const { install } = await import('../install/apply');
      const { readManifest } = await import('../install/manifest');
      const { DEFAULT_PATHS } = await import('../install/plan');
      const prefix = a.values.get('prefix') ?? DEFAULT_PREFIX;
      const source = sourceRoot();
      const previous = readManifest(DEFAULT_PATHS.manifest);
      // Run from a runtime tree (the package's, or one install copied): install from it in place.
      const inPlace = prefix === source && readMarker(source) !== null;
      if (prefix === source && !inPlace) {
        throw new VirtEbpfError('USAGE', `--prefix ${prefix} is this checkout`, { remedy: 'install into a root-owned directory of its own (default /usr/lib/virt-ebpf)' });
      }
      if (previous && previous.prefix !== prefix && readMarker(previous.prefix)?.owner === 'package') {
        throw new VirtEbpfError('INSTALL_PREFIX_FOREIGN', `virt-ebpf is installed from the Debian package (${previous.prefix}); a second install would take over its hook and wrappers`, {
          remedy: 'use the packaged command (/usr/sbin/virt-ebpf), or remove the package (apt-get purge virt-ebpf) first',
        });
      }
      if (!inPlace) assertPrefixWritable(prefix, previous?.prefix);
      const choices = await chooseEmulators(defaultCacheDir());
      const wrapped = choices.filter((c) => c.wrapped).map((c) => c.path);
      if (wrapped.length === 0) {
        throw new VirtEbpfError('EMULATOR_UNSUPPORTED', 'no supported, trusted qemu-system-* found to wrap', {
          remedy: 'install QEMU >= 9.0 (apt-get install -t bookworm-backports qemu-system-x86) and run `virt-ebpf probe`',
        });
      }
      if (!inPlace) copyRuntime(source, prefix, previous?.prefix);
      // An install keeps the mode it finds (the package's postinst and every "install again"
      // remedy run plain `install`); --no-host-wide leaves it.
      const hostWide = a.flags.has('host-wide') || (!a.flags.has('no-host-wide') && (previous?.entries.some((e) => e.kind === 'diversion') ?? false));
      const hook = a.flags.has('hook') || (!a.flags.has('no-hook') && previous?.hook !== 'off');
      if (hostWide && !wrapped.every((p) => p.startsWith('/usr/bin/'))) {
        throw new VirtEbpfError('USAGE', `--host-wide diverts packaged emulators in /usr/bin; ${wrapped.find((p) => !p.startsWith('/usr/bin/'))} is not one`, {
          remedy: 'remove the other qemu-system-* from PATH for the install, or install without --host-wide',
        });
      }
      const r = install({ ...hostFacts({ prefix, emulators: wrapped }), hostWide, hook }, { rescan: !a.flags.has('no-rescan') });
      for (const c of choices) process.stdout.write(`${c.wrapped ? 'wrapped' : 'skipped'}  ${c.path}${c.why ? `: ${c.why}` : ''}\n`);
      for (const p of r.written) process.stdout.write(`wrote    ${p}\n`);
      for (const p of r.kept) process.stdout.write(`kept     ${p} (yours)\n`);
      for (const p of r.diverted) process.stdout.write(`diverted ${p} (the packaged binary is at ${p}.distrib; its path runs the wrapper)\n`);
      if (!hook) process.stdout.write('no hook  libvirt runs no hook of ours; the broker reads each enabled domain\'s settings from libvirt when its QEMU starts\n');
      process.stdout.write(`runtime  ${prefix}\n${r.hookRescan}\n`);
      return 0;
    },
  },
  uninstall: {
    summary: UNINSTALL_SUMMARY,
    usage: UNINSTALL_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['force', 'no-rescan'] }, 'uninstall');
      requireRoot('uninstall');
      const { uninstall } = await import('../install/apply');
      const { readManifest } = await import('../install/manifest');
      const { DEFAULT_PATHS } = await import('../install/plan');
      const m = readManifest(DEFAULT_PATHS.manifest);
      if (!m) {
        process.stdout.write('virt-ebpf is not installed (no manifest); nothing to do\n');
        return 0;
      }
      if (!a.flags.has('force')) {
        const { enabledDomains } = await import('../libvirt/enabled');
        const enabled = enabledDomains();
        if (enabled.length) {
          throw new VirtEbpfError('USAGE', `domains still use virt-ebpf: ${enabled.join(', ')}`, {
            remedy: 'run `virt-ebpf disable DOMAIN` for each (their <emulator> points at our wrapper), or uninstall --force',
          });
        }
      }
      const r = uninstall(DEFAULT_PATHS.manifest, { rescan: !a.flags.has('no-rescan'), removeTree: m.prefix });
      for (const p of r.removed) process.stdout.write(`removed  ${p}\n`);
      for (const k of r.kept) process.stdout.write(`kept     ${k.path} (${k.why})\n`);
      return 0;
    },
  },
  refresh: {
    summary: REFRESH_SUMMARY,
    usage: REFRESH_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['quiet'] }, 'refresh');
      requireRoot('refresh');
      const { refreshWrappers } = await import('../install/apply');
      const { DEFAULT_PATHS } = await import('../install/plan');
      const r = refreshWrappers(DEFAULT_PATHS.manifest);
      if (!a.flags.has('quiet')) {
        for (const x of r.refreshed) process.stdout.write(`refreshed ${x.wrapper} (${x.real} changed)\n`);
        for (const x of r.missing) process.stdout.write(`missing   ${x}: its wrapper stays until \`virt-ebpf install\` runs again\n`);
        if (!r.refreshed.length && !r.missing.length) process.stdout.write('all wrappers are current\n');
      }
      return 0;
    },
  },
  doctor: {
    summary: DOCTOR_SUMMARY,
    usage: DOCTOR_USAGE,
    async run(argv) {
      const a = parseArgs(argv, { flags: ['json'], values: ['cache-dir'] }, 'doctor');
      const { runChecks, formatChecks, doctorExitCode } = await import('../doctor');
      const results = await runChecks({ cacheDir: a.values.get('cache-dir') ?? defaultCacheDir() });
      process.stdout.write((a.flags.has('json') ? JSON.stringify(results, null, 2) : formatChecks(results)) + '\n');
      return doctorExitCode(results);
    },
  },
  status: {
    summary: STATUS_SUMMARY,
    usage: STATUS_USAGE,
    async run(argv) {
      const { runStatus } = await import('../status');
      const r = await runStatus(argv);
      process.stdout.write(r.stdout);
      return r.code;
    },
  },
  verify: {
    summary: VERIFY_SUMMARY,
    usage: VERIFY_USAGE,
    async run(argv) {
      const { runVerify } = await import('../verify');
      const r = await runVerify(argv);
      process.stdout.write(r.stdout);
      return r.code;
    },
  },
  version: {
    summary: 'print the version',
    usage: 'virt-ebpf version',
    async run() {
      const pkg = JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };
      process.stdout.write(`virt-ebpf ${pkg.version}\n`);
      return 0;
    },
  },
};

function writeResult(r: { stdout: string; stderr: string; code: number }): number {
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  return r.code;
}

function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new VirtEbpfError('NOT_ROOT', `${what} needs root`, { remedy: `run it as root (sudo virt-ebpf ${what})` });
  }
}

export function usage(): string {
  const lines = ['virt-ebpf: virtio-net eBPF RSS for unprivileged QEMU under libvirt', '', 'Commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(9)} ${c.summary}`, `            ${c.usage}`);
  lines.push('', 'Errors are one line: what failed, why, and what to do. VIRT_EBPF_DEBUG=1 adds the evidence.', '');
  return lines.join('\n');
}
