/** isoTime (src/time.ts): the text V8's toISOString gives, without asking ICU for the time zone. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isoTime } from '../src/time';

test('isoTime gives what toISOString gives: the epoch, leap days, century years, the last millisecond of 9999, and random instants', () => {
  const edges = [
    0, 1, 999, 86_399_999, 86_400_000,
    Date.UTC(2000, 1, 29, 23, 59, 59, 999), // a leap day of a 400-year
    Date.UTC(2100, 1, 28, 12), Date.UTC(2100, 2, 1), // 2100 is not a leap year
    Date.UTC(1999, 11, 31, 23, 59, 59, 999), Date.UTC(2026, 11, 5, 10, 16, 53, 123),
    253_402_300_799_999, // 9999-12-31T23:59:59.999Z
    1234.9, // a fraction of a millisecond is cut, as Date does
  ];
  for (const ms of edges) assert.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  let seed = 12345;
  const next = () => (seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648) / 2_147_483_648;
  for (let i = 0; i < 20_000; i++) {
    const ms = Math.floor(next() * 253_402_300_800_000);
    assert.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  }
  assert.match(isoTime(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});
