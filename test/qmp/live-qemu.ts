/**
 * A real QEMU for QMP tests, started the way a management layer would probe it
 * (`-S -no-user-config -nodefaults -nographic -machine none`, QMP on a unix socket), and
 * always killed and reaped by stop().
 */
import { ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { ClientOptions, QmpClient } from '../../src/qmp';
import { gone, QEMU, tempDir } from '../harness';

export interface LiveQemu {
  proc: ChildProcess;
  pid: number;
  socket: string;
  stderr(): string;
  /** connect a (new) client, retrying while QEMU has not created the socket yet */
  connect(opts?: ClientOptions): Promise<QmpClient>;
  stop(): Promise<void>;
}

export function startQemu(): LiveQemu {
  const dir = tempDir('virt-ebpf-qemu-');
  const socket = join(dir.path, 'qmp.sock');
  const proc = spawn(QEMU, ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none', '-qmp', `unix:${socket},server=on,wait=off`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d) => (err += String(d)));
  const exited = gone(proc);
  return {
    proc,
    pid: proc.pid!,
    socket,
    stderr: () => err,
    async connect(opts: ClientOptions = {}) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          return await QmpClient.connect(socket, { timeoutMs: 2000, greetingTimeoutMs: 5000, commandTimeoutMs: 10_000, ...opts });
        } catch (e) {
          if (!isVirtEbpfError(e, 'QMP_CONNECT') || Date.now() > deadline || proc.exitCode !== null) throw e;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
      proc.stderr!.destroy();
      dir.remove();
    },
  };
}
