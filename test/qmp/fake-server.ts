/**
 * A scriptable QMP server on a unix socket for hostile-peer tests: each test says what the
 * server does with a connection (garbage, silence, EOF, huge lines, error replies). Every
 * socket it accepts is tracked so `close()` leaves no fd behind.
 */
import net from 'node:net';
import { join } from 'node:path';
import { tempDir } from '../harness';

export const GREETING = { QMP: { version: { qemu: { micro: 2, minor: 0, major: 10 }, package: 'fake' }, capabilities: ['oob'] } };

export interface FakeServer {
  path: string;
  /** every request line the server parsed, in order */
  requests: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

export type Behaviour = (sock: net.Socket, server: FakeServer) => void;

export async function fakeServer(behaviour: Behaviour): Promise<FakeServer> {
  const dir = tempDir('virt-ebpf-qmp-');
  const path = join(dir.path, 'qmp.sock');
  const sockets = new Set<net.Socket>();
  const fake: FakeServer = {
    path,
    requests: [],
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      dir.remove();
    },
  };
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    behaviour(sock, fake);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return fake;
}

export function send(sock: net.Socket, obj: unknown): void {
  sock.write(JSON.stringify(obj) + '\r\n');
}

/** A well-behaved QMP server whose command results come from `handler` (undefined: no reply at all). */
export function responder(handler: (cmd: string, args: Record<string, unknown> | undefined, sock: net.Socket) => unknown): Behaviour {
  return (sock, fake) => {
    send(sock, GREETING);
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const req = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: Record<string, unknown>; id?: unknown };
        buf = buf.slice(nl + 1);
        fake.requests.push(req);
        if (req.execute === 'qmp_capabilities') {
          send(sock, { return: {}, id: req.id });
          continue;
        }
        const out = handler(req.execute, req.arguments, sock);
        if (out === undefined) continue;
        const body = out as { error?: unknown };
        send(sock, body.error ? { id: req.id, error: body.error } : { return: out, id: req.id });
      }
    });
  };
}
