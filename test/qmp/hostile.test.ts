/**
 * The QMP client against peers that misbehave: each failure must surface as the right typed
 * error, quickly, and never as a hang. Timeouts here are short on purpose; the `elapsed`
 * bounds prove nothing waited for a default timeout.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { isVirtEbpfError, ErrorCode } from '../../src/errors';
import { QmpClient, queryHelperPaths, requestEbpf, getfd } from '../../src/qmp';
import { watchFds } from '../harness';
import { Behaviour, GREETING, fakeServer, responder, send } from './fake-server';

let checkFds: () => void;
before(() => {
  checkFds = watchFds();
});
after(() => checkFds());

const FAST = { timeoutMs: 1000, greetingTimeoutMs: 400, commandTimeoutMs: 400 };

async function withServer<T>(behaviour: Behaviour, fn: (path: string) => Promise<T>): Promise<T> {
  const server = await fakeServer(behaviour);
  try {
    return await fn(server.path);
  } finally {
    await server.close();
  }
}

/** Run `fn`, expect a VirtEbpfError with `code`, within `withinMs`. */
async function expectCode(code: ErrorCode, withinMs: number, fn: () => Promise<unknown>): Promise<Error> {
  const t0 = Date.now();
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  const elapsed = Date.now() - t0;
  assert.ok(caught !== undefined, `expected ${code}, but it succeeded`);
  assert.ok(isVirtEbpfError(caught, code), `expected ${code}, got ${(caught as { code?: string }).code}: ${(caught as Error).message}`);
  assert.ok(elapsed < withinMs, `${code} took ${elapsed} ms (limit ${withinMs})`);
  return caught as Error;
}

test('connect to a missing socket: QMP_CONNECT', async () => {
  const e = await expectCode('QMP_CONNECT', 500, () => QmpClient.connect('/nonexistent/dir/qmp.sock', FAST));
  assert.match(e.message, /ENOENT/);
});

test('garbage instead of a greeting: QMP_PROTOCOL', async () => {
  await withServer(
    (s) => s.write('Hello, this is not QMP\n'),
    (p) => expectCode('QMP_PROTOCOL', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('a JSON line that is not an object: QMP_PROTOCOL', async () => {
  await withServer(
    (s) => s.write('[1,2,3]\n'),
    (p) => expectCode('QMP_PROTOCOL', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('a JSON object that is not a greeting: QMP_PROTOCOL', async () => {
  await withServer(
    (s) => send(s, { QMP: { version: 'ten' } }),
    (p) => expectCode('QMP_PROTOCOL', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('partial line then EOF: QMP_CLOSED', async () => {
  await withServer(
    (s) => s.end('{"QMP": {"version": '),
    (p) => expectCode('QMP_CLOSED', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('early EOF: QMP_CLOSED', async () => {
  await withServer(
    (s) => s.end(),
    (p) => expectCode('QMP_CLOSED', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('no greeting: QMP_TIMEOUT after the greeting timeout', async () => {
  await withServer(
    () => undefined,
    (p) => expectCode('QMP_TIMEOUT', 900, () => QmpClient.connect(p, FAST)),
  );
});

test('greeting, then silence: QMP_TIMEOUT on qmp_capabilities', async () => {
  await withServer(
    (s) => send(s, GREETING),
    async (p) => {
      const e = await expectCode('QMP_TIMEOUT', 900, () => QmpClient.connect(p, FAST));
      assert.match(e.message, /qmp_capabilities/);
    },
  );
});

test('huge line without newline: QMP_LINE_TOO_LONG, not unbounded buffering', async () => {
  await withServer(
    (s) => {
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      for (let i = 0; i < 32; i++) s.write(chunk); // 2 MiB, no newline, connection stays open
    },
    (p) => expectCode('QMP_LINE_TOO_LONG', 900, () => QmpClient.connect(p, { ...FAST, maxLineBytes: 256 * 1024 })),
  );
});

test('huge complete line in one chunk is refused too', async () => {
  await withServer(
    (s) => s.write(`{"QMP": "${'x'.repeat(300_000)}"}\n`),
    (p) => expectCode('QMP_LINE_TOO_LONG', 900, () => QmpClient.connect(p, { ...FAST, maxLineBytes: 100_000 })),
  );
});

test('error reply: QMP_COMMAND with QEMU class and desc, connection still usable', async () => {
  await withServer(
    responder((cmd) => (cmd === 'query-status' ? { status: 'prelaunch', running: false } : { error: { class: 'CommandNotFound', desc: `The command ${cmd} has not been found` } })),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        const e = (await expectCode('QMP_COMMAND', 300, () => c.execute('frobnicate'))) as Error & { fields: Record<string, unknown> };
        assert.equal(e.fields.class, 'CommandNotFound');
        assert.equal(e.fields.desc, 'The command frobnicate has not been found');
        assert.deepEqual(await c.execute('query-status'), { status: 'prelaunch', running: false });
      } finally {
        c.close();
      }
    },
  );
});

test('error reply to qmp_capabilities fails the open with QMP_COMMAND', async () => {
  await withServer(
    (s) => {
      send(s, GREETING);
      s.on('data', (d) => {
        const id = JSON.parse(String(d)).id;
        send(s, { id, error: { class: 'GenericError', desc: 'nope' } });
      });
    },
    (p) => expectCode('QMP_COMMAND', 300, () => QmpClient.connect(p, FAST)),
  );
});

test('events are kept apart from replies, even in the same chunk as the greeting', async () => {
  await withServer(
    (s, fake) => {
      // Greeting and an event in one write: the event must not be lost or taken for a reply.
      s.write(`${JSON.stringify(GREETING)}\r\n${JSON.stringify({ event: 'EARLY', timestamp: { seconds: 1, microseconds: 2 } })}\r\n`);
      let buf = '';
      s.on('data', (d) => {
        buf += String(d);
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const req = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          fake.requests.push(req);
          // an event first, then the reply, all in one write
          s.write(`${JSON.stringify({ event: 'BEFORE_REPLY', data: { n: req.id } })}\r\n${JSON.stringify({ return: { ok: req.execute }, id: req.id })}\r\n`);
        }
      });
    },
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        const seen: string[] = [];
        c.onEvent((e) => seen.push(e.event));
        assert.deepEqual(await c.execute('query-status'), { ok: 'query-status' });
        assert.deepEqual(seen, ['BEFORE_REPLY']);
        assert.deepEqual(
          c.events.map((e) => e.event),
          ['EARLY', 'BEFORE_REPLY', 'BEFORE_REPLY'],
        );
        assert.deepEqual(c.events[0].timestamp, { seconds: 1, microseconds: 2 });
      } finally {
        c.close();
      }
    },
  );
});

test('replies are matched by id, not by order', async () => {
  await withServer(
    (s) => {
      send(s, GREETING);
      const held: Array<{ id: unknown; execute: string }> = [];
      let buf = '';
      s.on('data', (d) => {
        buf += String(d);
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const req = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (req.execute === 'qmp_capabilities') send(s, { return: {}, id: req.id });
          else held.push(req);
          if (held.length === 3) for (const r of held.reverse()) send(s, { return: r.execute, id: r.id });
        }
      });
    },
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        assert.deepEqual(await Promise.all(['a', 'b', 'c'].map((x) => c.execute(x))), ['a', 'b', 'c']);
      } finally {
        c.close();
      }
    },
  );
});

test('a reply with an unknown id is a protocol violation that fails everything pending', async () => {
  await withServer(
    responder((_cmd, _args, sock) => {
      send(sock, { return: {}, id: 'not-ours' });
      return undefined;
    }),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      await expectCode('QMP_PROTOCOL', 300, () => c.execute('query-status'));
      assert.equal(c.closed, true);
      await expectCode('QMP_CLOSED', 100, () => c.execute('query-status'));
    },
  );
});

test('a line that is neither reply nor event: QMP_PROTOCOL', async () => {
  await withServer(
    responder((_cmd, _args, sock) => {
      send(sock, { hello: 'world' });
      return undefined;
    }),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      await expectCode('QMP_PROTOCOL', 300, () => c.execute('query-status'));
    },
  );
});

test('command timeout: QMP_TIMEOUT, the late reply is dropped, the next command works', async () => {
  let first = true;
  await withServer(
    responder((cmd, _args, sock) => {
      if (first) {
        first = false;
        const late = () => send(sock, { return: 'late', id: 1 + 1 }); // id 2 = the first command after qmp_capabilities
        setTimeout(late, 150);
        return undefined;
      }
      return cmd;
    }),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        await expectCode('QMP_TIMEOUT', 300, () => c.execute('slow', undefined, { timeoutMs: 50 }));
        await new Promise((r) => setTimeout(r, 200)); // the late reply arrives meanwhile
        assert.equal(c.closed, false);
        assert.equal(await c.execute('fast'), 'fast');
      } finally {
        c.close();
      }
    },
  );
});

test('EOF with several commands pending rejects all of them with QMP_CLOSED', async () => {
  let n = 0;
  await withServer(
    responder((_cmd, _args, sock) => {
      if (++n === 3) sock.end();
      return undefined;
    }),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      const results = await Promise.allSettled([c.execute('a'), c.execute('b'), c.execute('c')]);
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.ok(isVirtEbpfError((r as PromiseRejectedResult).reason, 'QMP_CLOSED'));
      }
    },
  );
});

test('request-ebpf with invalid base64: BPF_BAD_BASE64', async () => {
  const objects = ['f0VMRg==!!', 'f0VMRgI', 'f0VM Rg==', 'f0VMRh==', 'f0VMRg-_'];
  for (const object of objects) {
    await withServer(
      responder(() => ({ object })),
      async (p) => {
        const c = await QmpClient.connect(p, FAST);
        try {
          await expectCode('BPF_BAD_BASE64', 300, () => requestEbpf(c));
        } finally {
          c.close();
        }
      },
    );
  }
});

test('request-ebpf reply without an object string: QMP_PROTOCOL', async () => {
  await withServer(
    responder(() => ({ obj: 'f0VMRg==' })),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        await expectCode('QMP_PROTOCOL', 300, () => requestEbpf(c));
      } finally {
        c.close();
      }
    },
  );
});

test('helper paths: query-helper-paths, else the find-ebpf-rss-helper spelling', async () => {
  await withServer(
    responder((cmd) =>
      cmd === 'find-ebpf-rss-helper' ? { path: '/usr/libexec/qemu-ebpf-rss-helper' } : { error: { class: 'CommandNotFound', desc: `The command ${cmd} has not been found` } },
    ),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        assert.deepEqual(await queryHelperPaths(c), [{ name: 'qemu-ebpf-rss-helper', path: '/usr/libexec/qemu-ebpf-rss-helper' }]);
      } finally {
        c.close();
      }
    },
  );
  await withServer(
    responder(() => [{ name: 'qemu-ebpf-rss-helper', path: '/opt/q/libexec/qemu-ebpf-rss-helper' }]),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        assert.deepEqual(await queryHelperPaths(c), [{ name: 'qemu-ebpf-rss-helper', path: '/opt/q/libexec/qemu-ebpf-rss-helper' }]);
      } finally {
        c.close();
      }
    },
  );
});

test('getfd on a peer that already closed: QMP_CLOSED, our fd stays open and nothing leaks', async () => {
  await withServer(
    responder((_cmd, _args, sock) => {
      sock.end();
      return undefined;
    }),
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      await expectCode('QMP_CLOSED', 300, () => c.execute('x'));
      await expectCode('QMP_CLOSED', 300, () => getfd(c, 'f', 0));
    },
  );
});

test('a peer slow to read: writes that hit EAGAIN are retried until all bytes are out', async () => {
  await withServer(
    (s, fake) => {
      send(s, GREETING);
      let buf = '';
      let paused = false;
      s.on('data', (d) => {
        buf += String(d);
        if (!paused && fake.requests.length === 1) {
          // stop reading for a while with the big command half-sent
          paused = true;
          s.pause();
          setTimeout(() => s.resume(), 200);
        }
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const req = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          fake.requests.push(req);
          send(s, { return: req.arguments ? String(req.arguments.blob).length : 0, id: req.id });
        }
      });
    },
    async (p) => {
      const c = await QmpClient.connect(p, FAST);
      try {
        const blob = 'b'.repeat(4 * 1024 * 1024); // far beyond the socket buffer
        const [big, small] = await Promise.all([c.execute('big', { blob }, { timeoutMs: 5000 }), c.execute('small', undefined, { timeoutMs: 5000 })]);
        assert.equal(big, blob.length);
        assert.equal(small, 0);
      } finally {
        c.close();
      }
    },
  );
});

test('a peer that never reads: the stalled write fails the connection with QMP_TIMEOUT', async () => {
  await withServer(
    (s) => {
      send(s, GREETING);
      s.once('data', (d) => {
        send(s, { return: {}, id: JSON.parse(String(d)).id });
        s.pause();
      });
    },
    async (p) => {
      const c = await QmpClient.connect(p, { ...FAST, writeStallMs: 200 });
      await expectCode('QMP_TIMEOUT', 1500, () => c.execute('big', { blob: 'b'.repeat(8 * 1024 * 1024) }, { timeoutMs: 5000 }));
      assert.equal(c.closed, true);
    },
  );
});
