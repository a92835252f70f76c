/**
 * The hook's requests over the broker's socket, for a hook run outside the broker (tests): the
 * same prewarm and release the broker's own `hook` op makes directly on its pool.
 */
import type { HookBroker } from '../hook/main';
import { brokerRequest } from './client';

export function clientBroker(opts: { socket?: string; timeoutMs?: number } = {}): HookBroker {
  return {
    async prewarm(emulator, count, domain) {
      brokerRequest({ op: 'prewarm', emulator, count, domain }, { socket: opts.socket, timeoutMs: opts.timeoutMs ?? 20_000 });
    },
    release(domain) {
      brokerRequest({ op: 'release', domain }, { socket: opts.socket, timeoutMs: opts.timeoutMs ?? 5000 });
    },
  };
}
