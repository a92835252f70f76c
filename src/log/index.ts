/**
 * Structured logs for the long-running piece (the broker): one line per event on stdout, so
 * journald keeps them — `level: message {"meta":…}` as text, or one JSON object per line.
 * Short-lived commands print one-line errors instead. Small on purpose: the broker is started
 * by the first connection to its socket, and a logging library took longer to load (~70 ms
 * here) than everything else before its first reply.
 */

import { isoTime } from '../time';

export type Level = 'error' | 'warn' | 'info' | 'debug';
const RANK: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger {
  error(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
  info(message: string, meta?: Record<string, unknown>): void;
  debug(message: string, meta?: Record<string, unknown>): void;
  /** a logger that adds `meta` to every line (before the line's own fields) */
  child(meta: Record<string, unknown>): Logger;
}

function line(format: 'text' | 'json', level: Level, message: string, meta: Record<string, unknown>): string {
  if (format === 'json') return JSON.stringify({ level, message, ...meta, timestamp: isoTime() }) + '\n';
  return `${level}: ${message}${Object.keys(meta).length ? ' ' + JSON.stringify(meta) : ''}\n`;
}

function make(max: number, format: 'text' | 'json', base: Record<string, unknown>, write: (s: string) => void): Logger {
  const at = (level: Level) => (message: string, meta: Record<string, unknown> = {}) => {
    if (RANK[level] <= max) write(line(format, level, message, { ...base, ...meta }));
  };
  return {
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    child: (meta) => make(max, format, { ...base, ...meta }, write),
  };
}

export function createLogger(level: Level | string = 'info', format: 'text' | 'json' = 'text'): Logger {
  return make(RANK[level as Level] ?? RANK.info, format, {}, (s) => process.stdout.write(s));
}

/** A logger that drops everything (tests, library use). */
export function silentLogger(): Logger {
  return make(-1, 'text', {}, () => undefined);
}
