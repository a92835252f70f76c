/**
 * A conversation with the guest fixture over any byte stream pair: QEMU's stdio here, a unix
 * socket or pty when libvirt runs the guest. It only waits and sends; it owns no process.
 */
import type { Readable, Writable } from 'node:stream';
import { GuestError } from './error';
import { tail } from '../../../src/errors';
import { checkProtocolLine } from './cmdline';
import { ConsoleParser, parseEthtoolStats, type ConsoleBlock, type ConsoleEvent } from './console';

export interface GuestConsoleOptions {
  /** Every console line outside blocks, and every block, for debugging. */
  log?: (line: string) => void;
  /** Extra evidence for errors once the stream ended (e.g. QEMU's stderr and exit status). */
  describeEnd?: () => string;
}

interface Waiter {
  match: (e: ConsoleEvent) => boolean;
  resolve: (e: ConsoleEvent) => void;
  reject: (e: Error) => void;
}

/** Keep the transcript bounded: a runaway guest must not eat the test's memory. */
const TRANSCRIPT_MAX = 4 << 20;

export class GuestConsole {
  readonly #parser = new ConsoleParser();
  readonly #events: ConsoleEvent[] = [];
  readonly #waiters = new Set<Waiter>();
  readonly #output: Writable | null;
  readonly #opts: GuestConsoleOptions;
  #transcript = '';
  #ended = false;
  #seq = 0;

  constructor(input: Readable, output: Writable | null, opts: GuestConsoleOptions = {}) {
    this.#output = output;
    this.#opts = opts;
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => this.#push(this.#parser.feed(chunk), chunk));
    const finish = (): void => {
      if (this.#ended) return;
      this.#push(this.#parser.end(), '');
      this.#ended = true;
      for (const w of this.#waiters) w.reject(this.#endError());
      this.#waiters.clear();
    };
    input.on('end', finish);
    input.on('close', finish);
    input.on('error', finish);
  }

  /** Everything the guest printed so far (the last 4 MiB). */
  get transcript(): string {
    return this.#transcript;
  }

  /** Completed blocks so far, in order. */
  get blocks(): ConsoleBlock[] {
    return this.#events.flatMap((e) => (e.kind === 'block' ? [e.block] : []));
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Resolve at the first event (already seen or future) that matches. */
  waitFor(match: (e: ConsoleEvent) => boolean, timeoutMs: number, what: string): Promise<ConsoleEvent> {
    const seen = this.#events.find(match);
    if (seen) return Promise.resolve(seen);
    if (this.#ended) return Promise.reject(this.#endError(what));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        reject(
          new GuestError('GUEST_TIMEOUT', `guest fixture: no ${what} within ${timeoutMs} ms`, {
            remedy: 'look at the console transcript in the detail; raise the timeout if the machine is just slow',
            detail: tail(this.#transcript, 40),
          }),
        );
      }, timeoutMs);
      const w: Waiter = {
        match,
        resolve: (e) => { clearTimeout(timer); resolve(e); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      this.#waiters.add(w);
    });
  }

  async waitReady(timeoutMs = 90_000): Promise<void> {
    await this.waitFor((e) => e.kind === 'ready', timeoutMs, 'READY marker');
  }

  /** The first block with this label, already printed or still to come. */
  async block(label: string, timeoutMs = 30_000): Promise<ConsoleBlock> {
    const e = await this.waitFor((ev) => ev.kind === 'block' && ev.block.label === label, timeoutMs, `block "${label}"`);
    return (e as Extract<ConsoleEvent, { kind: 'block' }>).block;
  }

  /** Send one raw protocol line. Only meaningful after READY. */
  send(line: string): void {
    checkProtocolLine(line);
    if (!this.#output || this.#ended) {
      throw new GuestError('GUEST_BOOT', 'guest fixture: console is not writable', {
        remedy: 'open the console with an output stream and send only while the guest runs',
        detail: this.#opts.describeEnd?.(),
      });
    }
    this.#output.write(line + '\n');
  }

  /**
   * Run a command in the guest and return its block. A fresh label per call makes the answer
   * unambiguous. Fails with GUEST_COMMAND on a non-zero exit unless `allowFailure`.
   */
  async run(command: string, opts: { timeoutMs?: number; allowFailure?: boolean; label?: string } = {}): Promise<ConsoleBlock> {
    const label = opts.label ?? `h${++this.#seq}`;
    this.send(`@${label} ${command}`);
    const block = await this.block(label, opts.timeoutMs ?? 30_000);
    if (block.rc !== 0 && !opts.allowFailure) {
      throw new GuestError('GUEST_COMMAND', `guest command "${command}" exited with ${block.rc}`, {
        remedy: 'see the command output in the detail',
        detail: block.output,
        fields: { rc: block.rc },
      });
    }
    return block;
  }

  /**
   * Packets received so far on each RX queue of `iface`, from `ethtool -S`; empty when the
   * guest's driver keeps no per-queue packet counters there (Linux 6.12's virtio_net reports
   * them only as netlink queue statistics).
   */
  async rxPacketsPerQueue(iface: string): Promise<number[]> {
    return parseEthtoolStats((await this.run(`ethtool -S ${iface}`)).output).rxPackets;
  }

  /**
   * The guest's interface with this MAC, once the guest has it: a hot-plugged NIC appears only
   * after the guest's PCI hot-plug handling (seconds under TCG). Fails with GUEST_COMMAND.
   */
  async interfaceWithMac(mac: string, timeoutMs = 90_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const out = (await this.run('for d in /sys/class/net/*; do echo "${d##*/} $(cat $d/address)"; done')).output;
      const hit = out.split('\n').map((l) => l.trim().split(' ')).find((p) => p[1] === mac.toLowerCase());
      if (hit) return hit[0];
      if (Date.now() > deadline) {
        throw new GuestError('GUEST_COMMAND', `the guest has no interface with MAC ${mac} after ${timeoutMs} ms`, {
          remedy: 'check that the NIC was attached (virsh domiflist) and that the guest kernel handles PCI hot-plug',
          detail: out,
        });
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  #push(events: ConsoleEvent[], chunk: string): void {
    this.#transcript += chunk;
    if (this.#transcript.length > TRANSCRIPT_MAX) this.#transcript = this.#transcript.slice(-TRANSCRIPT_MAX / 2);
    for (const e of events) {
      if (e.kind !== 'line' && e.kind !== 'begin') this.#events.push(e);
      if (this.#opts.log) {
        if (e.kind === 'line') this.#opts.log(e.text);
        else if (e.kind === 'block') this.#opts.log(`[${e.block.label} rc=${e.block.rc}] ${e.block.command}\n${e.block.output}`);
      }
      for (const w of this.#waiters) {
        if (w.match(e)) {
          this.#waiters.delete(w);
          w.resolve(e);
        }
      }
    }
  }

  #endError(what?: string): GuestError {
    const extra = this.#opts.describeEnd?.();
    return new GuestError('GUEST_EXITED', `guest fixture: console closed${what ? ` before ${what}` : ''}`, {
      remedy: 'the guest or its emulator stopped; see the transcript and emulator output in the detail',
      detail: [tail(this.#transcript, 40), extra].filter(Boolean).join('\n--- emulator ---\n'),
    });
  }
}
