/**
 * What the TypeScript side and the C shims (shims/*.c) share: paths, the broker's op names and
 * the limits both ends enforce. The C header the shims include (vebpf-constants.h) is generated
 * from this module at build time (src/shims/header.ts, scripts/build-shims.sh), so a value is
 * written once.
 */
import { HANDOFFS, RSS_HANDOFF } from '../argv/handoff';

/** Where the broker listens unless its config says otherwise (the shims read the config too). */
export const BROKER_SOCKET = '/run/virt-ebpf/broker.sock';
/** Per running domain, what the hook recorded at prepare: `<uuid>.json` (policy, hot-plug). */
export const DOMAIN_STATE_DIR = '/run/virt-ebpf/domains';
export const CONFIG_FILE = '/etc/virt-ebpf/config.json';
/** Our metadata's namespace in a domain XML. */
export const XML_NAMESPACE = 'https://virt-ebpf.org/xmlns/1.0';
/** How a plan names the K-th fd that comes with it: `@virt-ebpf-fd:K@`. */
export const FD_MARKER = '@virt-ebpf-fd:';
/** The remedy of every "cannot reach the broker" message, in TypeScript and in C alike. */
export const BROKER_REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`';

/** The hot-plug shim's file name: the build writes it beside the wrapper shim, which preloads it from there. */
export const SHIM_SO = 'vebpf-qmp.so';

/**
 * The QMP lines the hot-plug shim asks the broker about: one that names a kind's command and its
 * marker (handoff.ts), e.g. `device_add` and `rss`.
 */
export const PLAN_LINES: ReadonlyArray<readonly [string, string]> = HANDOFFS.map((k) => [k.qmpCommand, k.marker] as const);
/** The QMP commands after which the hot-plug shim connects to the broker early (HandoffKind.warmOn). */
export const WARM_LINES: readonly string[] = [...new Set(HANDOFFS.flatMap((k) => (k.warmOn ? [k.warmOn] : [])))];
/** The words that make the wrapper ask the broker for fds: a command-line argument with one of them (handoff.ts). */
export const ARGV_MARKERS: readonly string[] = [...new Set(HANDOFFS.map((k) => k.marker))];

/** The property the hot-plug shim names when it refuses a device_add on its own (no broker). */
export const RSS_REFUSAL_PROPERTY = RSS_HANDOFF.properties[0].name;
/** How many names a refusal puts there (QEMU counts them before it looks one up). */
export const RSS_FDS_PER_CONTEXT = RSS_HANDOFF.fdsPerContext;

/** The start-path shims, built from shims/*.c by `npm run build` (scripts/build-shims.sh), relative to the prefix. */
export const SHIM_FILES = { wrapper: 'dist/shims/vebpf-wrapper', hook: 'dist/shims/vebpf-hook', qmp: `dist/shims/${SHIM_SO}` } as const;

/** The broker ops the shims send. */
export const OPS = { execPlan: 'exec-plan', devicePlan: 'device-plan', hook: 'hook', hello: 'hello' } as const;

export const LIMITS = {
  /** fds one message may carry (SCM_MAX_FD) */
  maxFds: 253,
  /** the longest QMP line the hot-plug shim looks at, and `device-plan` takes */
  maxQmpLine: 65536,
  /** the most bytes a `device-plan` splices into a line (a refusal names its reason 4 times) */
  maxSplice: 8192,
  /** fds one device_add may get (QEMU's RSS takes 4) */
  maxDeviceFds: 8,
  /** the longest a device_add waits for the broker before the policy applies, in seconds */
  devicePlanTimeoutS: 5,
  /** the longest the wrapper waits for an exec-plan, in seconds */
  execPlanTimeoutS: 10,
  /** the longest the wrapper waits for the broker to take a start that needs nothing of it yet, in seconds */
  bindTimeoutS: 2,
  /** the longest the hook waits for the broker (libvirt waits for the hook), in seconds */
  hookTimeoutS: 30,
} as const;
