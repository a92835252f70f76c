/**
 * libvirt's qemu hook calls, as a closed set: argv `NAME OP SUBOP EXTRA` with `-`
 * for empty. Only the events we act on are named; everything else is `ignored`. Pure.
 */
export type HookEvent =
  | { kind: 'prepare'; name: string }
  | { kind: 'release'; name: string; reason: string }
  | { kind: 'migrate'; name: string }
  | { kind: 'restore'; name: string }
  | { kind: 'reconnect'; name: string }
  | { kind: 'ignored'; name: string; op: string; subop: string };

export function parseHookArgs(argv: readonly string[]): HookEvent {
  const [name = '-', op = '-', subop = '-', extra = '-'] = argv;
  switch (`${op} ${subop}`) {
    case 'prepare begin':
      return { kind: 'prepare', name };
    case 'release end':
      return { kind: 'release', name, reason: extra };
    case 'migrate begin':
      return { kind: 'migrate', name };
    case 'restore begin':
      return { kind: 'restore', name };
    case 'reconnect begin':
      return { kind: 'reconnect', name };
    default:
      return { kind: 'ignored', name, op, subop };
  }
}

/** Whether libvirt reads this event's stdout as the replacement XML (empty keeps it). */
export function mayReplaceXml(e: HookEvent): boolean {
  return e.kind === 'migrate' || e.kind === 'restore';
}

/**
 * Whether the hook fails closed when it breaks (times out, throws): only at prepare, where the
 * domain's policy is known to be ours to enforce. A migrate or restore is refused only for the
 * one reason runHook names (strict, and no wrapper on this host); a broken hook lets it go on
 * as it ran on the source. reconnect must never fail.
 */
export function mayFail(e: HookEvent): boolean {
  return e.kind === 'prepare';
}

/** A domain as libvirt names it to us: by name and/or uuid. */
export interface DomainRef {
  name?: string;
  uuid?: string;
}

export function domainUuid(xml: string): string | undefined {
  return /<domain\b[\s\S]*?<uuid>\s*([0-9a-fA-F-]{36})\s*<\/uuid>/.exec(xml)?.[1]?.toLowerCase();
}
