/**
 * docs/status-schema.md (virt-ebpf.status/v1) written down as a yup schema, independently of
 * src/: strict (no coercion) and closed (a field the document does not list fails), so the
 * output cannot drift from what the document promises.
 */
import * as yup from 'yup';

const int = () => yup.number().strict().integer().min(0);
const str = () => yup.string().strict();
const closed = <T extends yup.ObjectShape>(shape: T) => yup.object(shape).strict().noUnknown(true, (p) => `unknown field ${p.unknown}`);
const stringMap = () =>
  yup.mixed<Record<string, string>>().test('string-map', 'must map names to strings', (v) => v === undefined || (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string')));

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const steering = closed({
  kind: str().oneOf(['ebpf', 'software-hash-report', 'software-no-ebpf', 'none', 'unknown']).required(),
  label: str().required(),
  confidence: str().oneOf(['certain', 'likely', 'unknown']).required(),
  reason: str().required(),
  evidence: yup.array(str().required()).strict().required(),
  guestHashReport: str().oneOf(['not-offered', 'negotiated', 'not-negotiated', 'driver-not-ready', 'unknown']).required(),
});

const nicCommon = {
  id: str(),
  netdev: str(),
  mac: str().matches(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/),
  tap: str(),
  queues: int().min(1),
  vhost: yup.boolean().strict(),
  hashReport: yup.boolean().strict().required(),
  hashProperties: stringMap(),
};

const nic = closed({
  origin: str().oneOf(['command-line', 'unnamed-program']).required(),
  rssFrom: str().oneOf(['domain', 'host-policy']),
  ...nicCommon,
  ebpf: closed({
    source: str().oneOf(['fd-numbers', 'fd-names', 'self-loaded', 'unnamed']).required(),
    matchedBy: str().oneOf(['command-line', 'only-candidate', 'order', 'none']).required(),
    fds: yup.array(int().required()).strict(),
    progId: int().min(1).required(),
    mapIds: yup.array(int().min(1).required()).strict().length(3).required(),
  }).default(undefined),
  steering: steering.default(undefined),
  state: str().oneOf(['active', 'unconfigured', 'software', 'redirect-off', 'no-ebpf', 'unreadable']).required(),
  summary: str().required(),
  rss: closed({
    redirect: yup.boolean().strict().required(),
    populateHash: yup.boolean().strict().required(),
    hashTypes: int().required(),
    hashTypeNames: yup.array(str().required()).strict().required(),
    indirectionsLen: int().required(),
    defaultQueue: int().required(),
    key: str().matches(/^([0-9a-f]{2})*$/).required(),
    table: yup.array(int().required()).strict().max(128).required(),
  }).default(undefined),
  tableDigest: str().matches(/^sha256:[0-9a-f]{64}$/),
  histogram: yup.array(closed({ queue: int().required(), entries: int().required(), share: yup.number().strict().min(0).max(1).required() })).strict(),
  problems: yup.array(str().required()).strict().required(),
}).test('digest-with-rss', 'tableDigest is present exactly when rss is', (n) => (n.rss === undefined) === (n.tableDigest === undefined));

const plainNic = closed({ ...nicCommon, steering: steering.required() });

export const STATUS_V1 = closed({
  schema: str().oneOf(['virt-ebpf.status/v1']).required(),
  collectedAt: str().matches(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/).required(),
  host: closed({
    name: str().required(),
    uuid: str().matches(UUID),
    uuidSource: str().oneOf(['host_uuid', 'machine-id', 'smbios']),
    uuidProblem: str(),
  })
    .required()
    .test('uuid-or-problem', 'host has a uuid or says why not', (h) => (h.uuid === undefined) !== (h.uuidProblem === undefined)),
  domains: yup
    .array(
      closed({
        pid: int().min(1).required(),
        name: str(),
        uuid: str().matches(UUID),
        uid: int(),
        user: str(),
        emulator: closed({ path: str().required(), version: str(), problem: str() }).default(undefined),
        nics: yup.array(nic).strict().required(),
        plainNics: yup.array(plainNic).strict().required(),
      }),
    )
    .strict()
    .required(),
});

/** The first violations of the v1 schema, or [] when `doc` conforms. */
export function schemaViolations(doc: unknown): string[] {
  try {
    STATUS_V1.validateSync(doc, { strict: true, abortEarly: false });
    return [];
  } catch (e) {
    return (e as yup.ValidationError).errors ?? [String(e)];
  }
}
