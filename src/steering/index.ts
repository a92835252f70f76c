/**
 * Which steering is in effect per NIC: the pure decision (decide.ts) and the host-side facts
 * it rests on (observe.ts). docs/steering.md explains both.
 */
export {
  decideSteering,
  guestHashReport,
  steeringLine,
  STEERING_LABELS,
  MIN_FRAMES,
  HEADER_HASH_REPORT,
  HEADER_V1,
  HEADER_INITIAL,
  type Steering,
  type SteeringKind,
  type SteeringFacts,
  type Confidence,
  type GuestHashReport,
  type HeaderFact,
  type RunFact,
  type MapsFact,
} from './decide';
export { readTapHeader, tapFdsOf, tapQueues, tapFrames, sampleRuns, type RunTarget } from './observe';
