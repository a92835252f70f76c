/** isoTime (src/time.ts): the text V8's toISOString gives, without asking ICU for the time zone. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isoTime } from '../src/time';

const FIRST = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
const LAST = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

test('isoTime gives what toISOString gives: the epoch, leap days, century years, years 0000 and 9999, and random instants', () => {
  const edges = [
    0, 1, 999, 86_399_999, 86_400_000, -1, -86_400_000, -86_400_001,
    FIRST, FIRST + 1, Date.UTC(1600, 1, 29), Date.UTC(1900, 1, 28, 23, 59, 59, 999), Date.UTC(1900, 2, 1),
    Date.UTC(2000, 1, 29, 23, 59, 59, 999), // a leap day of a 400-year
    Date.UTC(2100, 1, 28, 12), Date.UTC(2100, 2, 1), // 2100 is not a leap year
    Date.UTC(1999, 11, 31, 23, 59, 59, 999), Date.UTC(2026, 11, 5, 10, 16, 53, 123),
    LAST,
    1234.9, -1234.9, -0.5, // a fraction of a millisecond is dropped toward zero, as Date does
  ];
  for (const ms of edges) assert.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  let seed = 12345;
  const next = () => (seed = (seed * 48_271) % 2_147_483_647) / 2_147_483_647; // MINSTD: exact in doubles
  for (let i = 0; i < 20_000; i++) {
    const ms = FIRST + Math.floor(next() * (LAST - FIRST + 1));
    assert.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  }
  assert.match(isoTime(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});

test('isoTime refuses what toISOString would not write with four-digit years, and what is no instant', () => {
  for (const ms of [FIRST - 1, LAST + 1, NaN, Infinity, -Infinity]) assert.throws(() => isoTime(ms), RangeError, String(ms));
});
