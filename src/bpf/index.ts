/**
 * eBPF objects: `parseBpfObject` reads what an object declares (pure, no privilege),
 * `validateRssSpec` accepts only QEMU's RSS object, `loadRss` is the one privileged step and
 * returns owned fds in `ebpf-rss-fds` order. libbpf is loaded on first `loadRss` only.
 */
export { parseBpfObject, type BpfSpec, type BpfProgramSpec, type BpfMapSpec, type BpfMapSource } from './spec';
export {
  validateRssSpec,
  rssProblems,
  decodeRssConfig,
  RSS_ROLES,
  RSS_MAPS,
  RSS_PROGRAM,
  RSS_CONFIG_SIZE,
  RSS_MAX_OBJECT_BYTES,
  BPF_F_MMAPABLE,
  BPF_MAP_TYPE_ARRAY,
  BPF_PROG_TYPE_SOCKET_FILTER,
  type RssRole,
  type RssConfig,
  type ExpectedMap,
} from './rss';
export { dropLogBuffers, loadRss, loadRssAsync, parseRssObject, validateRssObject, type ValidatedRssObject, type RssContext, type LoadRssOptions } from './load';
export { openProgById, openMapById, mapLookup, mapUpdate, mapInfo, progInfo, progTestRun, enableRunStats, type BpfMapInfo, type BpfProgInfo, type TestRunResult } from './live';
