/**
 * The 2021 helper protocol (seed 000): an emulator names its helper with `query-helper-paths`,
 * the helper proves with a build stamp that it belongs to that emulator, and `HELPER --fd N`
 * hands over the loaded eBPF fds. Only for emulators without `request-ebpf`.
 */
export { runHelper, type RunHelperOptions } from './run';
export {
  verifyStamp,
  readHelperStamps,
  readEmulatorStamps,
  helperStampsFromElf,
  findStampStrings,
  judgeStamps,
  isStamp,
  shortStamp,
  StampScanner,
  STAMP_PREFIXES,
  STAMP_REMEDY,
  type StampHit,
  type StampVerdict,
} from './stamp';
