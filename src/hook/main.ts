/**
 * The libvirt hook (/etc/libvirt/hooks/qemu.d/virt-ebpf). Root, full domain XML on stdin.
 * Never calls back into libvirt (it would deadlock) and is bounded in time. prepare fails on
 * unusable metadata or, under the strict policy, when no fds can be had; migrate and restore
 * fail only under strict when this host has no wrapper (libvirt then cancels the incoming
 * migration before the source pauses, or the restore); `reconnect` never fails (libvirt would
 * kill the running QEMU).
 */
import { existsSync, readFileSync } from 'node:fs';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import { domainFacts, withoutWrapper } from '../xml';
import { DOMAIN_STATE_DIR, removeDomainState, writeDomainState } from '../policy';
import { DEFAULT_PATHS } from '../install/plan';
import { refreshIfStale } from '../install/apply';
import { DomainRef, domainUuid, HookEvent, mayFail, parseHookArgs } from './event';
import { settingsOf, type DomainFacts } from './facts';

export interface HookResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * What the hook asks of the broker. Inside the broker (the `hook` op) these call the pool
 * directly: a blocking client to its own socket would deadlock the broker's event loop. Outside
 * it (tests) src/broker/hook-client.ts asks over the socket.
 */
export interface HookBroker {
  prewarm(emulator: string, count: number, domain: DomainRef): Promise<void>;
  release(domain: DomainRef): void;
}

export interface HookEnv {
  /** needed for prepare and release (migrate and restore never ask the broker) */
  broker?: HookBroker;
  /** the domain XML's facts (the broker passes its FactsMemo); default: parse each time */
  facts?: (xml: string) => DomainFacts;
  stateDir?: string;
  manifest?: string;
}

/** prepare/release reach Node only by mistake: the hook shim sends them to the broker. */
const noBroker: HookBroker = {
  prewarm: async () => {
    throw new VirtEbpfError('USAGE', 'prepare runs inside the broker (the hook shim sends it there), not in this Node hook', { remedy: 'let libvirt run the installed hook file' });
  },
  release: () => undefined,
};

function line(e: unknown): string {
  return isVirtEbpfError(e) ? e.oneLine() : `virt-ebpf: ${String(e)}`;
}

export async function runHook(event: HookEvent, xml: string, env: HookEnv = {}): Promise<HookResult> {
  const broker = env.broker ?? noBroker;
  const ok = (stdout = '', stderr = ''): HookResult => ({ code: 0, stdout, stderr });
  if (event.kind === 'ignored' || event.kind === 'reconnect') return ok();
  let facts: DomainFacts;
  try {
    facts = (env.facts ?? domainFacts)(xml);
  } catch (e) {
    // Our metadata is unusable: say so, but only a start may be refused for it (a migration
    // or restore of such a domain runs as the XML says, as it ran on the source).
    return event.kind === 'prepare' ? { code: 1, stdout: '', stderr: line(e) + '\n' } : ok('', line(e) + '\n');
  }
  const uuid = domainUuid(xml);
  const domain = { name: event.name, uuid };
  const stateDir = env.stateDir ?? DOMAIN_STATE_DIR;
  const settings = settingsOf(facts);
  /** What the wrapper and the broker read of this domain at exec-plan and device-plan. */
  const remember = (): void => {
    if (uuid && settings) writeDomainState({ name: event.name, uuid }, settings, { by: 'hook' }, stateDir);
  };
  if (!facts.enabled) {
    // Opted out of the host-wide mode: the broker reads it from the state.
    if (settings && event.kind === 'prepare') remember();
    if (settings && event.kind === 'release') removeDomainState(uuid, stateDir);
    return ok();
  }

  switch (event.kind) {
    case 'release': {
      try {
        broker.release(domain);
      } catch {
        /* the broker drops unclaimed contexts itself when it restarts */
      }
      removeDomainState(uuid, stateDir);
      return ok();
    }
    case 'migrate':
    case 'restore': {
      const cfg = facts.config!;
      if (existsSync(cfg.emulator.wrapper)) return ok();
      // This host has no wrapper for that emulator. strict: refuse (libvirt cancels the incoming
      // migration or the restore; a migrating guest has not paused yet). fallback: the real
      // QEMU with the devices unchanged (the stream carries their state).
      const what = event.kind === 'migrate' ? 'the incoming migration' : 'the restore';
      if (cfg.policy === 'strict') {
        return { code: 1, stdout: '', stderr: `virt-ebpf: ${cfg.emulator.wrapper} is not installed on this host and ${event.name}'s policy is strict: ${what} is refused (run \`virt-ebpf install\` here, or \`virt-ebpf enable ${event.name} --policy fallback\`)\n` };
      }
      return ok(withoutWrapper(xml).xml, `virt-ebpf: ${cfg.emulator.wrapper} is not installed on this host: ${event.name} runs without eBPF RSS here (policy fallback; run \`virt-ebpf install\`)\n`);
    }
    case 'prepare': {
      const cfg = facts.config!;
      const strict = cfg.policy === 'strict';
      const fail = (msg: string): HookResult => (strict ? { code: 1, stdout: '', stderr: msg + '\n' } : ok('', `${msg}\nvirt-ebpf: policy is fallback: ${event.name} starts without eBPF RSS if the wrapper cannot get fds\n`));
      remember();
      if (refreshIfStale(env.manifest ?? DEFAULT_PATHS.manifest, cfg.emulator.wrapper)) {
        return fail(`virt-ebpf: ${cfg.emulator.original} changed since libvirt read its capabilities; the wrapper is refreshed so libvirt re-reads them: start ${event.name} again`);
      }
      const count = facts.rssNics.length;
      if (count === 0) return ok();
      try {
        await broker.prewarm(cfg.emulator.original, count, domain);
        return ok();
      } catch (e) {
        return fail(line(e));
      }
    }
  }
}

async function main(): Promise<void> {
  const event = parseHookArgs(process.argv.slice(2));
  // Bounded: a hook that hangs would hang libvirt's start.
  const guard = setTimeout(() => {
    process.stderr.write('virt-ebpf: hook timed out\n');
    process.exit(mayFail(event) ? 1 : 0);
  }, 30_000);
  guard.unref();
  let xml = '';
  try {
    xml = event.kind === 'ignored' ? '' : readFileSync(0, 'utf8');
  } catch {
    /* no stdin */
  }
  let r: HookResult;
  try {
    r = await runHook(event, xml);
  } catch (e) {
    r = { code: mayFail(event) ? 1 : 0, stdout: '', stderr: line(e) + '\n' };
  }
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  process.exitCode = r.code;
}

if (require.main === module) void main();
