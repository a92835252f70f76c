/**
 * A broker in a process of its own, as the unit runs it (the production logger at info level,
 * its lines to stdout), for benches that time what QEMU waits for: a broker in the bench's own
 * process would share its event loop with the bench's QMP clients, and its work after a reply
 * would delay their reading of QEMU's answer.
 * argv: the config (JSON), the hook environment (JSON). Prints `ready` once it listens; SIGTERM
 * closes it.
 */
import { brokerV8 } from '../src/broker/v8';

brokerV8(); // as `virt-ebpf broker` does, before the broker's modules load (bench/hotplug.ts gives node the unit's flags)
const [config, hookEnv, qemuConf] = process.argv.slice(2, 5);
void (async () => {
  const { startBroker } = await import('../src/broker/daemon');
  const { validateConfig } = await import('../src/broker/config');
  const { createLogger } = await import('../src/log');
  const broker = await startBroker(validateConfig(JSON.parse(config)), { logger: createLogger('info', 'text'), hookEnv: JSON.parse(hookEnv), qemuConf });
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => process.once('SIGTERM', resolve));
  await broker.close();
})().catch((e) => {
  process.stderr.write(`broker-process: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
