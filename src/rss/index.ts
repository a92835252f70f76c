/**
 * RSS as virtio-net and QEMU's steering program define it, without any kernel: the Toeplitz
 * hash, which packet fields feed it under which hash types, the queue the program picks, and
 * the byte layout of QEMU's map values. The reference `verify` compares the live program with.
 */
export { toeplitz, MS_RSS_KEY, RSS_KEY_SIZE } from './toeplitz';
export { HASH_TYPE, HASH_TYPES_ALL, HASH_TYPES_LINUX_DEFAULT, hashTypeNames, type HashTypeName } from './hash-types';
export {
  rssHashInput,
  describeFlow,
  parseIpv4,
  parseIpv6,
  parseAddress,
  protoNumber,
  IPPROTO_TCP,
  IPPROTO_UDP,
  type Flow,
  type HashInput,
  type HashInputKind,
} from './flow';
export { referenceQueue, RSS_TABLE_ENTRIES, type RssState, type Steering, type SteeringPath } from './steer';
export { keyFromMapValue, keyToMapValue, encodeRssConfig, decodeRssConfig, RSS_CONFIG_SIZE, type RssConfig } from './maps';
