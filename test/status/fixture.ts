/**
 * A status report as buildReport makes it, for the pure tests: one domain with an eBPF NIC whose
 * guest ran `ethtool -X eth0 equal 2`, a vhost NIC that asked for RSS without eBPF, a plain NIC.
 */
import { classify, decodeRssView, queueHistogram, tableDigest, type RawRssMaps, type StatusReport } from '../../src/status';
import { keyToMapValue, MS_RSS_KEY } from '../../src/rss';
import { decideSteering } from '../../src/steering';

// After `ethtool -X eth0 equal 2` in a Debian 6.1 guest QEMU wrote this config.
export const EQUAL2: RawRssMaps = {
  config: Buffer.from('01003f00000080000000', 'hex'),
  keyValue: keyToMapValue(MS_RSS_KEY),
  table: Array.from({ length: 128 }, (_, i) => i % 2),
};
export const ZERO: RawRssMaps = { config: Buffer.alloc(10), keyValue: Buffer.alloc(40), table: new Array(128).fill(0) };

export const REPORT: StatusReport = {
  domains: [
    {
      pid: 4242,
      name: 'vm1',
      uuid: '7e43b05d-f9a6-4612-a5bc-0b6f29de939c',
      uid: 64055,
      user: 'libvirt-qemu',
      emulator: { path: '/usr/bin/qemu-system-x86_64', version: '10.0.2' },
      nics: [
        {
          origin: 'command-line',
          id: 'net0',
          netdev: 'hostnet0',
          mac: '52:54:00:8d:c8:3b',
          tap: 'vnet0',
          queues: 2,
          vhost: false,
          ebpf: { source: 'fd-numbers', matchedBy: 'command-line', fds: [40, 41, 42, 43], progId: 651, mapIds: [539, 540, 541] },
          hashReport: false,
          steering: decideSteering({ rss: true, hashReportOffered: false, vhost: false, program: true, header: { bytes: 12 }, runs: { runs: 9, frames: 9, windowMs: 1000 }, tapQueues: 2, maps: 'configured' }),
          ...classify(decodeRssView(EQUAL2), false),
          rss: decodeRssView(EQUAL2),
          tableDigest: tableDigest(decodeRssView(EQUAL2)),
          histogram: queueHistogram(EQUAL2.table, 2),
          problems: [],
        },
        {
          origin: 'command-line',
          id: 'net1',
          mac: '52:54:00:8d:c8:3c',
          queues: 4,
          vhost: true,
          hashReport: false,
          state: 'no-ebpf',
          summary: 'asked for RSS but runs without eBPF: QEMU runs as uid 64055 without CAP_BPF and was given no ebpf-rss-fds; with vhost on, QEMU then does not offer RSS to the guest',
          problems: [],
        },
      ],
      plainNics: [
        {
          id: 'net2',
          mac: '52:54:00:8d:c8:3d',
          tap: 'vnet2',
          queues: 1,
          vhost: false,
          hashReport: false,
          steering: decideSteering({ rss: false, hashReportOffered: false, vhost: false, program: false }),
        },
      ],
    },
  ],
};
