/**
 * Which receive steering is in effect on a virtio-net NIC of a running QEMU, decided from what
 * the host can see without talking to QEMU or the guest (docs/steering.md). Pure: the facts are
 * gathered by observe.ts and status; every answer carries how sure it is and why.
 *
 * What QEMU does (hw/net/virtio-net.c, read for 10.0 and 11.1, which behave the same on a tap):
 * - The program is attached to the tap (TUNSETSTEERINGEBPF) only when the guest sends an RSS
 *   configuration and hash reporting was not negotiated (virtio_net_commit_rss_config:
 *   `populate_hash` detaches it, otherwise virtio_net_attach_ebpf_rss writes the three maps
 *   with ebpf_rss_set_all and attaches). Every multiqueue control command and a reset detach it
 *   again and leave the maps as they were.
 * - `populate_hash` is the guest's VIRTIO_NET_F_HASH_REPORT (offered only with `hash=on`, which
 *   libvirt writes for `rss_hash_report='on'`): the program cannot fill in the hash, so QEMU
 *   steers in software (virtio_net_process_rss) and never writes the maps on that path.
 * - The negotiated header length is pushed to the tap (TUNSETVNETHDRSZ): 20 bytes
 *   (virtio_net_hdr_v1_hash) with hash reporting, 12 without, 10 until the driver sets features.
 * - Without a program QEMU steers in software once the guest turns RSS on ("Can't load eBPF
 *   RSS - fallback to software RSS"); with vhost it does not offer RSS at all.
 */

export type SteeringKind = 'ebpf' | 'software-hash-report' | 'software-no-ebpf' | 'none' | 'unknown';

export const STEERING_LABELS: Record<SteeringKind, string> = {
  ebpf: 'eBPF',
  'software-hash-report': 'QEMU software RSS because the guest enabled hash report',
  'software-no-ebpf': 'QEMU software RSS because QEMU holds no eBPF program',
  none: 'none',
  unknown: 'unknown',
};

/**
 * certain: follows from what was observed and QEMU's code, with no assumption left.
 * likely: one link cannot be seen from the host (typically whether the guest has sent its RSS
 * configuration yet) and is the usual case. unknown: the evidence does not decide.
 */
export type Confidence = 'certain' | 'likely' | 'unknown';

/** The virtio-net header length the tap exchanges with QEMU, or why it could not be read. */
export type HeaderFact = { bytes: number } | { error: string };

/** Runs of the NIC's program and frames the tap handed to QEMU over the same window. */
export type RunFact = { runs: number; frames: number; windowMs: number } | { error: string };

/** What the NIC's RSS maps say: QEMU writes them only on the way to attaching the program. */
export type MapsFact = 'configured' | 'unconfigured' | 'unreadable';

export interface SteeringFacts {
  /** `rss` on QEMU's command line. */
  rss: boolean;
  /** `hash` on QEMU's command line: QEMU offers VIRTIO_NET_F_HASH_REPORT (undefined: not known, e.g. a hot-plugged NIC). */
  hashReportOffered: boolean | undefined;
  vhost: boolean;
  /**
   * An eBPF program QEMU holds is tied to this NIC (true), QEMU holds none for it (false), or
   * it may hold one that could not be tied or used (undefined: fds named but unusable, several
   * unnamed programs for several NICs).
   */
  program: boolean | undefined;
  header?: HeaderFact;
  runs?: RunFact;
  /** Tap queues attached right now (QEMU detaches those beyond the pairs the guest uses). */
  tapQueues?: number;
  maps?: MapsFact;
}

/** What the guest negotiated about hash reporting, as far as the host can tell. */
export type GuestHashReport = 'not-offered' | 'negotiated' | 'not-negotiated' | 'driver-not-ready' | 'unknown';

export interface Steering {
  kind: SteeringKind;
  label: string;
  confidence: Confidence;
  /** One sentence: why this answer. */
  reason: string;
  /** The facts it rests on, each with where it comes from. */
  evidence: string[];
  guestHashReport: GuestHashReport;
}

/** Fewer frames than this with no program run do not show the program is detached (a frame queued before the window is read during it). */
export const MIN_FRAMES = 3;

export const HEADER_HASH_REPORT = 20;
export const HEADER_V1 = 12;
export const HEADER_INITIAL = 10;

export function guestHashReport(f: Pick<SteeringFacts, 'hashReportOffered' | 'header'>): GuestHashReport {
  if (f.hashReportOffered === false) return 'not-offered';
  if (!f.header || 'error' in f.header) return 'unknown';
  if (f.header.bytes === HEADER_HASH_REPORT) return 'negotiated';
  if (f.header.bytes === HEADER_V1) return 'not-negotiated';
  if (f.header.bytes === HEADER_INITIAL) return 'driver-not-ready';
  return 'unknown';
}

function headerEvidence(h: HeaderFact | undefined): string | undefined {
  if (!h) return undefined;
  if ('error' in h) return `tap vnet header: unreadable (${h.error})`;
  const meaning =
    h.bytes === HEADER_HASH_REPORT
      ? 'virtio_net_hdr_v1_hash: the guest negotiated VIRTIO_NET_F_HASH_REPORT'
      : h.bytes === HEADER_V1
        ? 'the guest negotiated without hash reporting'
        : h.bytes === HEADER_INITIAL
          ? "the guest's driver has not set its features"
          : 'a length QEMU does not use for virtio-net';
  return `tap vnet header ${h.bytes} bytes (TUNGETVNETHDRSZ): ${meaning}`;
}

function runEvidence(r: RunFact | undefined): string | undefined {
  if (!r) return undefined;
  if ('error' in r) return `program runs: not counted (${r.error})`;
  return `program ran ${r.runs} time${r.runs === 1 ? '' : 's'} while the tap passed ${r.frames} frame${r.frames === 1 ? '' : 's'} to QEMU in ${r.windowMs} ms (BPF run statistics)`;
}

const ran = (r: RunFact | undefined): r is { runs: number; frames: number; windowMs: number } => r !== undefined && !('error' in r) && r.runs > 0;
const idleWithTraffic = (r: RunFact | undefined): boolean => r !== undefined && !('error' in r) && r.runs === 0 && r.frames >= MIN_FRAMES;

export function decideSteering(f: SteeringFacts): Steering {
  const hr = guestHashReport(f);
  const evidence = [
    `QEMU command line: rss=${f.rss ? 'on' : 'off'}, hash=${f.hashReportOffered === undefined ? 'unknown' : f.hashReportOffered ? 'on' : 'off'}, vhost=${f.vhost ? 'on' : 'off'}, ${f.program === true ? 'an eBPF program tied to the NIC' : f.program === false ? 'no eBPF program' : 'an eBPF program that could not be tied to the NIC or used'}`,
    headerEvidence(f.header),
    runEvidence(f.runs),
    f.tapQueues !== undefined ? `tap queues attached: ${f.tapQueues}` : undefined,
    f.maps !== undefined ? `RSS maps: ${f.maps}` : undefined,
  ].filter((x): x is string => x !== undefined);
  const answer = (kind: SteeringKind, confidence: Confidence, reason: string): Steering => ({ kind, label: STEERING_LABELS[kind], confidence, reason, evidence, guestHashReport: hr });

  if (!f.rss) return answer('none', 'certain', 'rss is off on this NIC: QEMU offers the guest no RSS and the tap picks queues by its own flow hash');
  if (f.program && ran(f.runs)) {
    const odd = hr === 'negotiated' ? ' (although the guest negotiated hash reporting, which QEMU 10.0-11.1 never run eBPF with)' : '';
    return answer('ebpf', 'certain', `the tap runs the NIC's program on the frames it passes to QEMU${odd}`);
  }
  if (f.program === false && f.vhost) return answer('none', 'certain', 'QEMU holds no eBPF program and the NIC runs on vhost: QEMU then does not offer RSS to the guest');
  if (f.header && !('error' in f.header) && f.header.bytes === HEADER_INITIAL) {
    return answer('none', 'likely', "the guest's driver has not negotiated its features yet, so it cannot have turned RSS on; the tap picks queues itself");
  }
  if (hr === 'negotiated') {
    const seen = idleWithTraffic(f.runs) ? 'the program stays detached, as observed; ' : '';
    return answer(
      'software-hash-report',
      'likely',
      `the guest negotiated hash reporting, so QEMU never attaches the eBPF program and steers in software; ${seen}whether the guest has sent its RSS configuration yet (Linux 6.11+ at probe, older at \`ethtool -X\`) cannot be seen from the host`,
    );
  }
  if (f.program === undefined) {
    return answer('unknown', 'unknown', "QEMU's eBPF program for this NIC could not be tied to it or used (see the NIC's problems), so whether the tap runs it cannot be told");
  }
  if (!f.program) {
    return answer('software-no-ebpf', 'likely', "QEMU holds no eBPF program, so it steers in software once the guest turns RSS on (its log: \"Can't load eBPF RSS - fallback to software RSS\"); whether the guest has cannot be seen from the host");
  }
  if (f.tapQueues === 1) return answer('none', 'certain', 'only one tap queue is attached (the guest uses one queue pair): every frame goes to it, nothing is steered');
  if (idleWithTraffic(f.runs)) {
    if (hr === 'unknown') {
      return answer('unknown', 'unknown', 'the program is not attached; whether the guest negotiated hash reporting (QEMU then steers in software) could not be read from the tap');
    }
    return answer('none', 'likely', 'the program is not attached: the guest has not turned RSS on, or turned it off again (e.g. `ethtool -L` after `ethtool -X`); the tap picks queues itself');
  }
  if (f.maps === 'configured') {
    return answer('ebpf', 'likely', 'the maps hold the guest\'s RSS configuration, which QEMU writes only when it attaches the program; no traffic showed it running (an `ethtool -L` since would have detached it and left the maps)');
  }
  if (f.maps === 'unconfigured') {
    if (hr === 'unknown') return answer('unknown', 'unknown', 'the maps are empty and whether the guest negotiated hash reporting could not be read from the tap');
    return answer('none', 'likely', 'QEMU has written nothing to the maps: the guest has not sent an RSS configuration, and QEMU attaches the program only when it does; the tap picks queues itself');
  }
  return answer('unknown', 'unknown', 'neither traffic, the tap nor the maps tell');
}

/** `eBPF (certain): the tap runs …` — the one line status and doctor print per NIC. */
export function steeringLine(s: Steering): string {
  return `${s.label} (${s.confidence}): ${s.reason}`;
}
