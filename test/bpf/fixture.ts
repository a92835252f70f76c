/**
 * The real RSS object, fetched at test time from the installed QEMU (we do not commit QEMU's
 * bytes). A deliberately tiny, self-contained QMP exchange — greeting, qmp_capabilities,
 * request-ebpf, quit — so these tests do not depend on src/qmp. QEMU is always reaped.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { QEMU, tempDir } from '../harness';

let cached: Promise<Buffer> | undefined;

/** The object QEMU returns for `request-ebpf id=rss`, fetched once per test process. */
export function rssObject(): Promise<Buffer> {
  cached ??= fetchEbpfObject('rss');
  return cached.then((b) => Buffer.from(b)); // callers may mutate their copy
}

export async function fetchEbpfObject(id: string, qemu = QEMU, timeoutMs = 15_000): Promise<Buffer> {
  const dir = tempDir('virt-ebpf-bpf-fixture-');
  const path = join(dir.path, 'qmp.sock');
  const child = spawn(qemu, ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none', '-qmp', `unix:${path},server=on,wait=off`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let sock: Socket | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    const work = (async () => {
      sock = await connectWhenReady(path, () => child.exitCode !== null);
      const next = lineReader(sock);
      const reply = async (): Promise<Record<string, unknown>> => {
        for (;;) {
          const msg = JSON.parse(await next()) as Record<string, unknown>;
          if (!('event' in msg)) return msg;
        }
      };
      const command = async (execute: string, args?: object): Promise<unknown> => {
        sock!.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
        const r = await reply();
        if ('error' in r) throw new Error(`QMP ${execute} failed: ${JSON.stringify(r.error)}`);
        return r.return;
      };
      const greeting = await reply();
      if (!('QMP' in greeting)) throw new Error(`no QMP greeting: ${JSON.stringify(greeting)}`);
      await command('qmp_capabilities');
      const ret = (await command('request-ebpf', { id })) as { object?: string };
      if (typeof ret?.object !== 'string') throw new Error('request-ebpf returned no object');
      // QEMU may close the socket before answering quit; either way it is on its way out.
      await command('quit').catch(() => undefined);
      return Buffer.from(ret.object, 'base64');
    })();
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`QEMU fixture timed out after ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs);
    });
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
    sock?.destroy();
    if (child.exitCode === null && child.signalCode === null) {
      const grace = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(grace);
    }
    dir.remove();
  }
}

async function connectWhenReady(path: string, gone: () => boolean): Promise<Socket> {
  for (let i = 0; ; i++) {
    if (gone()) throw new Error('QEMU exited before its QMP socket appeared');
    if (existsSync(path)) {
      try {
        return await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
      } catch {
        /* the socket file exists before QEMU listens on it; retry */
      }
    }
    await new Promise((r) => setTimeout(r, Math.min(5 * (i + 1), 50)));
  }
}

/** Newline-delimited messages from a socket; rejects on EOF. */
function lineReader(sock: Socket): () => Promise<string> {
  let buf = '';
  const lines: string[] = [];
  let waiter: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  let ended = false;
  const pump = (): void => {
    if (!waiter) return;
    const w = waiter;
    if (lines.length > 0) {
      waiter = undefined;
      w.resolve(lines.shift()!);
    } else if (ended) {
      waiter = undefined;
      w.reject(new Error('QMP connection closed'));
    }
  };
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) lines.push(line);
    }
    pump();
  });
  const end = (): void => {
    ended = true;
    pump();
  };
  sock.on('end', end);
  sock.on('close', end);
  sock.on('error', end);
  return () =>
    new Promise<string>((resolve, reject) => {
      waiter = { resolve, reject };
      pump();
    });
}
