/**
 * The systemd units as `virt-ebpf install` renders them: `systemd-analyze verify` finds nothing
 * and the service's `systemd-analyze security` exposure stays at most 3.0 (real tools; they need
 * no running systemd). Then the real broker runs under what the unit grants — exactly its
 * capability bounding set (setpriv), no-new-privs, its system-call filter and address families
 * (the seccomp filter systemd would load, built with libseccomp: test/units/seccomp-exec.ts), a
 * private network namespace and a read-only filesystem but for its ReadWritePaths= and
 * CacheDirectory= — and probes QEMU, loads and hands out a context, and runs the hook's prepare
 * and release: the capability list is shown to be sufficient, not guessed. PID 1 here is not
 * systemd, so the unit itself cannot be started.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install } from '../../src/install/apply';
import { hostFacts } from '../../src/install/host';
import { brokerRequest } from '../../src/broker/client';
import { closeAll } from '../../src/fdpass';
import { DOMAIN_STATE_DIR } from '../../src/policy';
import { enableDomain, wrapperInDir } from '../../src/xml';
import { QEMU, REPO, needRoot, tempDir } from '../harness';
import { scratchPaths, trustedPrefix } from '../install/scratch';
import { domainXml } from '../coldstart/libvirt';

export const MAX_EXPOSURE = 3.0;

function renderUnits(root: string): { socket: string; service: string; prefix: string } {
  const paths = scratchPaths(root);
  const prefix = trustedPrefix();
  install({ ...hostFacts({ prefix, emulators: [QEMU], paths }), systemd: true, apparmor: false, apt: false }, { rescan: false });
  return { socket: join(paths.unitDir, 'virt-ebpfd.socket'), service: join(paths.unitDir, 'virt-ebpfd.service'), prefix };
}

/** Every value of each directive in [Service] (repeated directives accumulate). */
function serviceDirectives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) section = line;
    if (section !== '[Service]' || !line.includes('=') || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

/** systemd's named system-call groups, expanded (from `systemd-analyze syscall-filter`). */
function expandSyscalls(entries: string[]): string[] {
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of spawnSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8' }).stdout.split('\n')) {
    if (line.startsWith('@')) groups.set(line.trim(), (current = []));
    else if (current && /^\s+[@a-z0-9_]/.test(line)) current.push(line.trim());
  }
  const out = new Set<string>();
  const add = (e: string): void => {
    if (!e.startsWith('@')) return void out.add(e);
    const members = groups.get(e);
    assert.ok(members, `unknown system-call group ${e}`);
    members.forEach(add);
  };
  entries.flatMap((e) => e.split(/\s+/)).filter(Boolean).forEach(add);
  return [...out];
}

test('the rendered units: `systemd-analyze verify` reports nothing, the service\'s exposure is at most 3.0', (t) => {
  needRoot('install writes root-owned files');
  const d = tempDir();
  try {
    const u = renderUnits(d.path);
    // --man=no: Documentation= names virt-ebpf(8), which only the package installs.
    const verify = spawnSync('systemd-analyze', ['verify', '--man=no', u.socket, u.service], { encoding: 'utf8' });
    assert.equal(verify.error, undefined, 'systemd-analyze must be installed (systemd package)');
    assert.equal(`${verify.stdout}${verify.stderr}`, '', 'verify reports nothing');
    assert.equal(verify.status, 0);
    const security = spawnSync('systemd-analyze', ['security', '--offline=true', u.service], { encoding: 'utf8' });
    const m = /Overall exposure level for virt-ebpfd\.service: (\d+\.\d+)/.exec(security.stdout);
    assert.ok(m, `no exposure figure in: ${security.stdout}${security.stderr}`);
    t.diagnostic(`virt-ebpfd.service exposure ${m[1]}`);
    assert.ok(Number(m[1]) <= MAX_EXPOSURE, `exposure ${m[1]} > ${MAX_EXPOSURE}:\n${security.stdout}`);
  } finally {
    d.remove();
  }
});

const MARK = 'virt-ebpf-unit-sandbox';

/** Capability numbers (linux/capability.h) of the ones a unit of ours may name. */
const CAP_NUMBERS: Record<string, number> = { CAP_KILL: 5, CAP_SETGID: 6, CAP_SETUID: 7, CAP_NET_ADMIN: 12, CAP_SYS_PTRACE: 19, CAP_SYS_ADMIN: 21, CAP_SYS_NICE: 23, CAP_PERFMON: 38, CAP_BPF: 39 };

/** The unit's bounding set as /proc/PID/status shows a capability mask (16 hex digits). */
function capMask(service: string): string {
  const caps = serviceDirectives(readFileSync(service, 'utf8')).get('CapabilityBoundingSet')!.at(-1)!.split(/\s+/);
  let mask = 0n;
  for (const c of caps) {
    assert.ok(c in CAP_NUMBERS, `capability number of ${c}`);
    mask |= 1n << BigInt(CAP_NUMBERS[c]);
  }
  return mask.toString(16).padStart(16, '0');
}

/**
 * argv that runs `inner` the way the unit would: a private mount namespace whose mounts are all
 * read-only but for the unit's writable paths, a private network namespace, the unit's bounding
 * set and no-new-privs (setpriv), its seccomp filter.
 */
function sandboxed(service: string, scratch: string, inner: string[]): string[] {
  const dir = serviceDirectives(readFileSync(service, 'utf8'));
  const one = (k: string) => {
    const v = dir.get(k);
    assert.ok(v?.length, `the unit sets ${k}=`);
    return v[v.length - 1];
  };
  assert.equal(one('ProtectSystem'), 'strict');
  assert.equal(one('NoNewPrivileges'), 'yes');
  assert.equal(one('PrivateNetwork'), 'yes');
  const writable = [...one('ReadWritePaths').split(/\s+/), join('/var/cache', one('CacheDirectory'))];
  const caps = one('CapabilityBoundingSet')
    .split(/\s+/)
    .map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`);
  const families = one('RestrictAddressFamilies').split(/\s+/);
  assert.deepEqual(families, ['AF_UNIX'], 'this sandbox knows AF_UNIX only');
  const spec = join(scratch, 'seccomp.json');
  const errno = one('SystemCallErrorNumber');
  assert.equal(errno, 'EPERM');
  writeFileSync(spec, JSON.stringify({ allow: expandSyscalls(dir.get('SystemCallFilter')!), errno: 1, socketFamilies: [1] }));
  const script = [
    'set -e',
    // Writable paths first (a bind of each onto itself), then every other mount read-only.
    ...writable.map((p) => `mkdir -p '${p}' && mount --bind '${p}' '${p}'`),
    `findmnt -rn -o TARGET | grep -v -E '^/(proc|dev)(/|$)' | while read -r m; do case " ${writable.join(' ')} " in *" $m "*) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac; done`,
    'exec "$@"',
  ].join('\n');
  return [
    'unshare', '--mount', '--net', '--propagation', 'private', '--',
    'sh', '-c', script, MARK,
    'setpriv', '--bounding-set', ['-all', ...caps].join(','), '--inh-caps', '-all', '--no-new-privs', '--',
    process.execPath, join(REPO, 'dist/test/units/seccomp-exec.js'), spec, '--',
    ...inner,
  ];
}

test('the sandbox is real: inside it / is read-only, an AF_INET socket is refused, caps are the unit\'s', () => {
  needRoot('namespaces, setpriv, seccomp');
  const d = tempDir();
  try {
    const u = renderUnits(d.path);
    const probe = `
      const fs = require('fs'); const net = require('net'); const out = {};
      try { fs.writeFileSync('/etc/${MARK}', 'x'); out.etc = 'written'; } catch (e) { out.etc = e.code; }
      try { fs.writeFileSync('/run/virt-ebpf/${MARK}', 'x'); fs.unlinkSync('/run/virt-ebpf/${MARK}'); out.run = 'written'; } catch (e) { out.run = e.code; }
      out.caps = /CapEff:\\s*(\\S+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1];
      out.seccomp = /Seccomp:\\s*(\\S+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1];
      const s = net.createServer().on('error', (e) => { out.inet = e.code; console.log(JSON.stringify(out)); });
      s.listen(0, '127.0.0.1', () => { out.inet = 'listening'; s.close(); console.log(JSON.stringify(out)); });
    `;
    const argv = sandboxed(u.service, d.path, [process.execPath, '-e', probe]);
    const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.etc, 'EROFS', '/etc is read-only');
    assert.equal(out.run, 'written', '/run/virt-ebpf is writable');
    assert.equal(out.caps, capMask(u.service), "the unit's capabilities only");
    assert.equal(out.seccomp, '2', 'a seccomp filter is loaded');
    assert.equal(out.inet, 'EAFNOSUPPORT', 'no AF_INET socket');
    assert.ok(!existsSync(`/etc/${MARK}`));
  } finally {
    d.remove();
  }
});

test('the real broker under exactly the unit\'s restrictions probes QEMU, loads and hands out a context, and runs the hook\'s prepare/release', async () => {
  needRoot('namespaces, setpriv, seccomp, BPF');
  const d = tempDir();
  const socket = `/run/virt-ebpf/${MARK}.sock`;
  const cacheDir = `/var/cache/virt-ebpf/${MARK}`; // fresh: the probe runs inside the sandbox
  rmSync(cacheDir, { recursive: true, force: true });
  const config = join(d.path, 'config.json');
  writeFileSync(config, JSON.stringify({ socket, cacheDir: join(cacheDir, 'probe'), pool: { size: 0 } }));
  const u = renderUnits(d.path);
  // The unit's own command line, with the scratch config for the installed one.
  const exec = serviceDirectives(readFileSync(u.service, 'utf8')).get('ExecStart')!.at(-1)!.split(/\s+/);
  assert.deepEqual(exec.slice(-4), [join(u.prefix, 'dist/src/cli/main.js'), 'broker', '--config', '/etc/virt-ebpf/config.json'], `ExecStart: ${exec.join(' ')}`);
  const argv = sandboxed(u.service, d.path, [...exec.slice(0, -1), config]);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (c) => (log += c));
  child.stderr.on('data', (c) => (log += c));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const uuid = '6d0f6c57-3f0a-4c43-9a55-2c3f3e0b7a11';
  try {
    for (let i = 0; ; i++) {
      try {
        brokerRequest({ op: 'hello' }, { socket, timeoutMs: 500 });
        break;
      } catch (e) {
        if (i > 150 || child.exitCode !== null) assert.fail(`the sandboxed broker did not answer: ${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // The broker process: what exec left of the chain (unshare → sh → setpriv → seccomp-exec → node).
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    const mask = capMask(u.service);
    assert.match(status, new RegExp(`^CapEff:\\s*${mask}$`, 'm'), "the broker holds the unit's capabilities only");
    assert.match(status, new RegExp(`^CapBnd:\\s*${mask}$`, 'm'));
    assert.match(status, /^NoNewPrivs:\s*1$/m);
    assert.match(status, /^Seccomp:\s*2$/m);

    const r = brokerRequest({ op: 'acquire', emulator: QEMU, count: 1 }, { socket, timeoutMs: 30_000 });
    try {
      assert.equal(r.reply.op, 'acquire');
      assert.equal(r.fds.length, 4, 'one program and three maps');
    } finally {
      closeAll(r.fds);
    }
    assert.ok(readdirSync(join(cacheDir, 'probe')).length > 0, 'the probe ran in the sandbox and cached its answer where the unit lets it');

    const xml = enableDomain(domainXml({ name: MARK, nics: [{ rss: true }] }).replace('</name>', `</name>\n  <uuid>${uuid}</uuid>`), { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf') }).xml;
    const prep = brokerRequest({ op: 'hook', event: 'prepare', name: MARK, xml }, { socket, timeoutMs: 30_000 });
    assert.deepEqual(prep.reply, { v: 1, id: prep.reply.id, ok: true, op: 'hook', code: 0, stdout: '', stderr: '' });
    const state = join(DOMAIN_STATE_DIR, `${uuid}.json`);
    assert.equal(statSync(state).mode & 0o777, 0o644, "the domain state is readable by QEMU's account (UMask=0022)");
    const rel = brokerRequest({ op: 'hook', event: 'release', name: MARK, xml }, { socket, timeoutMs: 10_000 });
    assert.equal((rel.reply as { code: number }).code, 0);
    assert.ok(!existsSync(state));
    assert.equal(child.exitCode, null, `the broker is still running: ${log}`);
  } finally {
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
    rmSync(cacheDir, { recursive: true, force: true });
    rmSync(socket, { force: true });
    rmSync(join(DOMAIN_STATE_DIR, `${uuid}.json`), { force: true });
    d.remove();
  }
});
