/**
 * UTC timestamps in ISO 8601 form (`2026-12-05T10:16:53.123Z`), computed from the epoch by
 * arithmetic. V8's `Date.prototype.toISOString` would give the same text, but its first call
 * asks ICU for the host's time zone, which pages in ~0.8 MiB of ICU's data and code that stay
 * resident for the process's life; the broker stamps every probe it caches (and every JSON log
 * line), so it formats its timestamps here.
 */

const DAY_MS = 86_400_000;
/** 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the years written with four digits. */
const FIRST_MS = -62_167_219_200_000;
const LAST_MS = 253_402_300_799_999;

/**
 * `ms` since the epoch (default: now) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, as toISOString gives it;
 * a fraction of a millisecond is dropped toward zero, as Date does. A RangeError outside the
 * years 0000–9999 (toISOString writes those with six digits and a sign) or for NaN/±Infinity.
 * Pure but for reading the clock when `ms` is not given.
 */
export function isoTime(ms: number = Date.now()): string {
  const t = Math.trunc(ms);
  if (!(t >= FIRST_MS && t <= LAST_MS)) throw new RangeError(`isoTime: ${ms} is not an instant of the years 0000-9999`);
  const days = Math.floor(t / DAY_MS);
  let rest = t - days * DAY_MS;
  // The civil date of a day count (proleptic Gregorian; eras of 400 years from 0000-03-01).
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const dayOfEra = z - era * 146_097;
  const yearOfEra = Math.floor((dayOfEra - Math.floor(dayOfEra / 1460) + Math.floor(dayOfEra / 36_524) - Math.floor(dayOfEra / 146_096)) / 365);
  const dayOfYear = dayOfEra - (365 * yearOfEra + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100));
  const m5 = Math.floor((5 * dayOfYear + 2) / 153); // months from March
  const day = dayOfYear - Math.floor((153 * m5 + 2) / 5) + 1;
  const month = m5 < 10 ? m5 + 3 : m5 - 9;
  const year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0);
  const hours = Math.floor(rest / 3_600_000);
  rest -= hours * 3_600_000;
  const minutes = Math.floor(rest / 60_000);
  rest -= minutes * 60_000;
  const seconds = Math.floor(rest / 1000);
  const millis = rest - seconds * 1000;
  const pad = (n: number, width = 2) => String(n).padStart(width, '0');
  return `${pad(year, 4)}-${pad(month)}-${pad(day)}T${pad(hours)}:${pad(minutes)}:${pad(seconds)}.${pad(millis, 3)}Z`;
}
