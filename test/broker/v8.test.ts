/**
 * How V8 runs the broker (src/broker/v8.ts): without an optimizing compiler and for size, from
 * the unit's command line or set at start, unless node was started with a flag that says
 * otherwise. Checked on the real `virt-ebpf broker` process with V8's own trace of what it
 * optimizes; the memory this saves is in `npm run bench`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brokerRequest } from '../../src/broker/client';
import { BROKER_NODE_FLAGS, missingBrokerFlags, v8FlagNames } from '../../src/broker/v8';
import { REPO, needRoot, tempDir } from '../harness';
import { startBrokerProcess } from '../security/support';

const V8_MODULE = join(REPO, 'dist', 'src', 'broker', 'v8.js');

/** What brokerV8 sets in a node started with `execArgv`. */
function flagsSetUnder(execArgv: string[]): string[] {
  const out = execFileSync(process.execPath, [...execArgv, '-e', `process.stdout.write(JSON.stringify(require(${JSON.stringify(V8_MODULE)}).brokerV8()))`], { encoding: 'utf8' });
  return JSON.parse(out) as string[];
}

test('brokerV8 sets what node was not started with, in any spelling V8 takes; option values are not flags', () => {
  const all = [...BROKER_NODE_FLAGS];
  assert.deepEqual(flagsSetUnder([]), all);
  assert.deepEqual(flagsSetUnder([...BROKER_NODE_FLAGS]), []);
  assert.deepEqual(flagsSetUnder(['--turbofan']), ['--no-maglev', '--optimize-for-size']);
  for (const spelling of ['--opt', '--noopt', '-turbofan', '--no_turbofan']) assert.deepEqual(flagsSetUnder([spelling]), ['--no-maglev', '--optimize-for-size'], spelling);
  assert.deepEqual(flagsSetUnder(['--nooptimize-for-size']), ['--no-turbofan', '--no-maglev']);
  assert.deepEqual(flagsSetUnder(['--no-optimize_for_size', '--maglev']), ['--no-turbofan']);
  // An operator's own young generation keeps optimize-for-size (which would shrink it) off.
  assert.deepEqual(flagsSetUnder(['--max-semi-space-size=16']), ['--no-turbofan', '--no-maglev']);
  // `-r opt`: a module named opt, not the flag.
  const dir = tempDir('virt-ebpf-v8-');
  try {
    writeFileSync(join(dir.path, 'opt.js'), '');
    assert.deepEqual(flagsSetUnder(['-r', join(dir.path, 'opt.js')]), all);
    assert.deepEqual(v8FlagNames(['-r', 'opt', '--stack-size=984', '--no-deprecation']), new Set(['r', 'stack-size', 'deprecation']));
  } finally {
    dir.remove();
  }
});

test('the unit gives node the broker\'s flags (@BROKER_NODE_FLAGS@ before the CLI)', () => {
  const unit = readFileSync(join(REPO, 'templates', 'virt-ebpfd.service'), 'utf8');
  assert.match(unit, /^ExecStart=@NODE@ @BROKER_NODE_FLAGS@ @CLI@ broker /m);
  assert.deepEqual(missingBrokerFlags(BROKER_NODE_FLAGS), []);
});

/** Start `virt-ebpf broker` under node `flags` with V8's optimization trace, serve 3 000 requests, and return what V8 printed. */
async function brokerTrace(flags: string[]): Promise<string> {
  const broker = await startBrokerProcess({}, { nodeFlags: ['--trace-opt', ...flags] });
  try {
    for (let i = 0; i < 3000; i++) {
      const { reply } = brokerRequest({ op: 'status' }, { socket: broker.socket });
      assert.equal(reply.op, 'status');
    }
    return broker.log();
  } finally {
    await broker.stop();
  }
}

test('the broker process (started without flags) optimizes nothing through start-up and 3 000 requests; with node --turbofan it does', async () => {
  needRoot('the broker runs as root');
  const lean = await brokerTrace([]);
  assert.doesNotMatch(lean, /marking .* for optimization|completed (optimizing|compiling)/, 'an optimizing compiler ran in the broker');
  const stock = await brokerTrace(['--turbofan']);
  assert.match(stock, /completed optimizing/, 'the trace would have shown TurboFan');
});
