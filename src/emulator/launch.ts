/**
 * Run an emulator the way libvirt probes one (`-S -no-user-config -nodefaults -nographic
 * -machine none` plus a private QMP monitor), ask it the probe questions and record the
 * answers. This is the only part of the probe with side effects.
 *
 * The monitor is one end of a socketpair handed to QEMU as fd 3 (`-chardev socket,fd=3`):
 * nothing on the filesystem to race, squat or clean up, and no connect polling — QEMU's
 * greeting arrives on the socket as soon as it is ready.
 *
 * The child runs in its own process group and is always killed and reaped, whatever
 * happens; every wait is bounded by one deadline.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as libc from '../sys/libc';
import { VirtEbpfError, isVirtEbpfError, tail } from '../errors';
import { QmpClient, QmpReply, QmpTransport, parseCommandNames } from '../qmp';
import { BASE_PROBE_COMMANDS, FALLBACK_RSS_DEVICE, ProbeTranscript, QmpExchange, sourceCommand } from './caps';

export const PROBE_ARGS: readonly string[] = ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none', '-chardev', 'socket,id=qmp,fd=3', '-mon', 'chardev=qmp,mode=control'];

export interface LaunchOptions {
  timeoutMs: number;
  /** extra environment (the child otherwise gets only PATH and LC_ALL=C, as under libvirt) */
  env?: Record<string, string>;
  /**
   * The account to run the emulator as (libvirt probes as its QEMU account too): real, effective
   * and saved ids, no supplementary groups, hence no capabilities. Unset: as the caller.
   */
  runAs?: { uid: number; gid: number };
}

const STDERR_KEEP = 64 * 1024;
const REAP_WAIT_MS = 2_000;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: NodeJS.ErrnoException;
}

class Child {
  readonly proc: ChildProcess;
  readonly exited: Promise<Exit>;
  #exit: Exit | null = null;
  #stderr: Buffer[] = [];
  #stderrLen = 0;
  #stderrClosed: Promise<void>;
  #stderrOpen = true;

  constructor(file: string, args: readonly string[], monitorFd: number, env: Record<string, string>, runAs?: { uid: number; gid: number }) {
    // libuv drops supplementary groups (setgroups) before setgid/setuid when uid/gid are given.
    this.proc = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe', monitorFd], env, detached: true, ...runAs });
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => resolve((this.#exit = { code, signal })));
      this.proc.once('error', (e: NodeJS.ErrnoException) => {
        // 'error' also fires for a failed kill; only a spawn failure has no pid.
        if (this.proc.pid === undefined) resolve((this.#exit = { code: null, signal: null, spawnError: e }));
      });
    });
    this.#stderrClosed = new Promise((resolve) => {
      if (!this.proc.stderr) return resolve();
      this.proc.stderr.once('close', () => {
        this.#stderrOpen = false;
        resolve();
      });
    });
    this.proc.stderr?.on('data', (chunk: Buffer) => {
      this.#stderr.push(chunk);
      this.#stderrLen += chunk.length;
      while (this.#stderrLen > STDERR_KEEP && this.#stderr.length > 1) this.#stderrLen -= this.#stderr.shift()!.length;
    });
  }

  get exit(): Exit | null {
    return this.#exit;
  }

  get stderr(): string {
    return Buffer.concat(this.#stderr).toString('utf8');
  }

  /** Resolves with the exit, or null if it did not come within `ms`. */
  waitExit(ms: number): Promise<Exit | null> {
    if (this.#exit) return Promise.resolve(this.#exit);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), Math.max(0, ms));
      void this.exited.then((e) => {
        clearTimeout(timer);
        resolve(e);
      });
    });
  }

  /**
   * Kill the whole process group (a script's children too) and reap our child. Once our child
   * is reaped the group id is only safe to signal while a member still exists, which an open
   * stderr pipe proves; otherwise there is nothing left to kill.
   */
  async destroy(): Promise<void> {
    const pid = this.proc.pid;
    if (this.#exit && this.#stderrOpen) {
      // Normally stderr hits EOF right after the exit; if not, a descendant holds it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#stderrClosed, new Promise((r) => (timer = setTimeout(r, 50)))]);
      clearTimeout(timer);
    }
    if (pid !== undefined && (!this.#exit || this.#stderrOpen)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* group already gone */
      }
    }
    await this.waitExit(REAP_WAIT_MS);
    this.proc.stderr?.destroy();
  }
}

function lastLine(text: string): string {
  return text.trimEnd().split('\n').pop()?.trim() ?? '';
}

function describeExit(e: Exit): string {
  if (e.spawnError) return `could not be started (${e.spawnError.code ?? e.spawnError.message})`;
  return e.signal ? `was killed by ${e.signal}` : `exited with status ${e.code}`;
}

/** Only on failure paths: does the binary at least answer `-version` like QEMU? */
function looksLikeQemu(file: string, env: Record<string, string>, timeoutMs: number, runAs?: { uid: number; gid: number }): Promise<string | null> {
  return new Promise((resolve) => {
    execFile(file, ['-version'], { env, timeout: Math.max(200, timeoutMs), killSignal: 'SIGKILL', maxBuffer: 64 * 1024, ...runAs }, (_err, stdout) => {
      const m = /^QEMU emulator version (\d+\.\d+[^\s]*)/m.exec(String(stdout));
      resolve(m ? m[1] : null);
    });
  });
}

/**
 * Start `file`, record the probe exchanges, stop it. `shown` is the name used in messages.
 * Throws EMULATOR_TIMEOUT / EMULATOR_EXITED / EMULATOR_NOT_QEMU / EMULATOR_NOT_EXECUTABLE.
 */
export async function recordProbe(file: string, shown: string, opts: LaunchOptions): Promise<ProbeTranscript> {
  const deadline = Date.now() + opts.timeoutMs;
  const remaining = () => Math.max(1, deadline - Date.now());
  const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', ...opts.env };

  const [ours, theirs] = libc.socketpair();
  let child: Child;
  try {
    child = new Child(file, PROBE_ARGS, theirs, env, opts.runAs);
  } catch (e) {
    libc.close(ours);
    throw e;
  } finally {
    libc.close(theirs);
  }
  const transport = QmpTransport.fromFd(ours, { writeStallMs: opts.timeoutMs });
  const fields = () => ({ path: shown, realpath: file, pid: child.proc.pid, exit: child.exit, stderrTail: tail(child.stderr) });

  const timedOut = (phase: string, cause?: unknown) =>
    new VirtEbpfError('EMULATOR_TIMEOUT', `emulator ${shown} did not ${phase} within ${opts.timeoutMs} ms`, {
      remedy: 'check that it is a working QEMU (run it with -version) and that the host is not overloaded, or raise the probe timeout',
      detail: child.stderr || undefined,
      cause,
      fields: fields(),
    });
  const exited = (e: Exit, phase: string) =>
    e.spawnError
      ? new VirtEbpfError('EMULATOR_NOT_EXECUTABLE', `emulator ${shown} ${describeExit(e)}`, {
          remedy: 'point at the QEMU binary itself and make sure it can be executed (not on a noexec mount)',
          cause: e.spawnError,
          fields: fields(),
        })
      : new VirtEbpfError('EMULATOR_EXITED', `emulator ${shown} ${describeExit(e)} ${phase}${lastLine(child.stderr) ? `: ${lastLine(child.stderr)}` : ''}`, {
          remedy: 'run it by hand with -machine none to see the full error; a broken install or missing modules/firmware are the usual causes',
          detail: child.stderr || undefined,
          fields: fields(),
        });
  const notQemu = (why: string, cause?: unknown) =>
    new VirtEbpfError('EMULATOR_NOT_QEMU', `${shown} is not a QEMU system emulator: ${why}`, {
      remedy: 'give the path of a qemu-system-* binary',
      detail: child.stderr || undefined,
      cause,
      fields: fields(),
    });

  /** Turn a QMP failure into what it says about the emulator. */
  const classify = async (e: unknown, greeted: boolean): Promise<unknown> => {
    if (!isVirtEbpfError(e)) return e;
    if (e.code === 'QMP_TIMEOUT') return timedOut(greeted ? 'answer QMP' : 'greet on QMP', e);
    if (e.code === 'QMP_PROTOCOL' || e.code === 'QMP_LINE_TOO_LONG') return notQemu(`it does not speak QMP (${e.message})`, e);
    if (e.code !== 'QMP_CLOSED') return e;
    // The socket closes as the process dies; its exit status follows within moments.
    const exit = await child.waitExit(Math.min(remaining(), 500));
    if (!exit) return notQemu('it closed the QMP monitor but kept running', e);
    if (greeted || exit.spawnError) return exited(exit, greeted ? 'during the probe' : 'before greeting on QMP');
    // It died before greeting: a QEMU that cannot start (bad install), or not QEMU at all.
    const qemu = await looksLikeQemu(file, env, Math.min(remaining(), 2_000), opts.runAs);
    return qemu ? exited(exit, `before greeting on QMP (QEMU ${qemu})`) : notQemu(`it ${describeExit(exit)} without a QMP greeting and does not answer -version like QEMU`, e);
  };

  let client: QmpClient | null = null;
  try {
    try {
      client = await QmpClient.open(transport, { greetingTimeoutMs: remaining() });
    } catch (e) {
      // A qmp_capabilities failure (it has a command field) means the greeting did come.
      throw await classify(e, isVirtEbpfError(e) && e.fields.command === 'qmp_capabilities');
    }
    const exchanges: QmpExchange[] = [{ execute: 'qmp_capabilities', reply: { return: {} } }];
    const ask = async (execute: string, args?: Record<string, unknown>): Promise<QmpReply> => {
      const reply = await client!.executeRaw(execute, args, { timeoutMs: remaining() });
      exchanges.push(args === undefined ? { execute, reply } : { execute, arguments: args, reply });
      return reply;
    };
    try {
      // Pipelined: QEMU answers in order, ids keep them apart, one round trip instead of three.
      const base = await Promise.all(BASE_PROBE_COMMANDS.map((c) => ask(c.execute, c.arguments)));
      if ('error' in base[2]) await ask('device-list-properties', { typename: FALLBACK_RSS_DEVICE });
      const commandsReply = base[1];
      const names = 'return' in commandsReply ? parseCommandNames(commandsReply.return) : [];
      const source = sourceCommand(names);
      if (source) await ask(source.execute, source.arguments);
    } catch (e) {
      throw await classify(e, true);
    }
    return { greeting: client.greeting.raw, exchanges };
  } finally {
    if (client && !client.closed && !child.exit) {
      // A polite quit is as fast as a kill for a -S -machine none QEMU; kill covers the rest.
      await client.execute('quit', undefined, { timeoutMs: Math.min(remaining(), 300) }).catch(() => undefined);
      await child.waitExit(Math.min(remaining(), 300));
    }
    transport.close();
    await child.destroy();
  }
}
