/**
 * Structured logs for the long-running pieces (the broker): winston to stdout, one
 * line per event, so journald keeps them. Short-lived commands print one-line errors instead.
 */
import winston from 'winston';

export type Logger = winston.Logger;

export function createLogger(level = 'info', format: 'text' | 'json' = 'text'): Logger {
  return winston.createLogger({
    level,
    format:
      format === 'json'
        ? winston.format.combine(winston.format.timestamp(), winston.format.json())
        : winston.format.combine(
            winston.format.printf(({ level: lv, message, ...meta }) => {
              const rest = Object.keys(meta).length ? ' ' + JSON.stringify(meta) : '';
              return `${lv}: ${String(message)}${rest}`;
            }),
          ),
    transports: [new winston.transports.Console()],
  });
}

/** A logger that drops everything (tests, library use). */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });
}
