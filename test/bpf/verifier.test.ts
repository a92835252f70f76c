import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifierReason } from '../../src/bpf/load';

test('the reason is the complaint after the last instruction, with that instruction', () => {
  const log = [
    'func#0 @0',
    '0: R1=ctx() R10=fp0',
    '; x = y @ a.c:3',
    '5: (79) r2 = *(u64 *)(r1 +200)         ; R1=ctx()',
    'invalid bpf_context access off=200 size=8',
    'processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0',
    '',
  ].join('\n');
  assert.equal(verifierReason(log), 'at instruction 5 (r2 = *(u64 *)(r1 +200)): invalid bpf_context access off=200 size=8');
});

test('logs without instructions or statistics still give a line, and it stays short', () => {
  assert.equal(verifierReason('unreachable insn 1\nprocessed 0 insns (limit 1000000)\n'), 'unreachable insn 1');
  assert.equal(verifierReason('back-edge from insn 3 to 1'), 'back-edge from insn 3 to 1');
  assert.equal(verifierReason(''), 'no reason given');
  const long = verifierReason(`1: (b7) r0 = 0\n${'x'.repeat(1000)}`);
  assert.equal(long.length, 200);
  assert.ok(long.endsWith('…'));
});
