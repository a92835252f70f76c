/**
 * `node seccomp-exec.js SPEC.json -- PROGRAM ARGS…`: load the seccomp filter systemd would build
 * for a unit's SystemCallFilter= / RestrictAddressFamilies= / SystemCallErrorNumber=, then exec
 * PROGRAM under it (the filter is inherited across exec, and by every child). Built with the
 * system's libseccomp (the library systemd itself uses) through koffi; no systemd needed.
 * SPEC: { allow: string[] (syscall names), errno: number, socketFamilies: number[] }.
 */
import koffi from '../../src/sys/koffi';
import { readFileSync } from 'node:fs';
import { execve, setCloexec } from '../../src/sys/libc';

const SCMP_ACT_ALLOW = 0x7fff0000;
const SCMP_ACT_ERRNO = (e: number) => (0x00050000 | (e & 0xffff)) >>> 0;
const SCMP_CMP_NE = 1;
const SCMP_CMP_EQ = 4;
const EAFNOSUPPORT = 97;

const lib = koffi.load('libseccomp.so.2');
koffi.struct('scmp_arg_cmp', { arg: 'uint32', op: 'int', datum_a: 'uint64', datum_b: 'uint64' });
const init = lib.func('void *seccomp_init(uint32)');
const resolve = lib.func('int seccomp_syscall_resolve_name(const char *)');
const ruleAdd = lib.func('int seccomp_rule_add_array(void *, uint32, int, uint32, const scmp_arg_cmp *)');
const load = lib.func('int seccomp_load(void *)');

const [specPath, dashes, program, ...args] = process.argv.slice(2);
if (dashes !== '--' || !program) throw new Error('usage: seccomp-exec SPEC.json -- PROGRAM ARGS…');
const spec = JSON.parse(readFileSync(specPath, 'utf8')) as { allow: string[]; errno: number; socketFamilies: number[] };

const ctx = init(SCMP_ACT_ERRNO(spec.errno));
for (const name of new Set(spec.allow)) {
  const nr = resolve(name) as number;
  if (nr < 0 || name === 'socket') continue; // not a syscall of this architecture; socket: below
  const rc = ruleAdd(ctx, SCMP_ACT_ALLOW, nr, 0, null) as number;
  if (rc < 0) throw new Error(`seccomp_rule_add(${name}) failed: ${rc}`);
}
// RestrictAddressFamilies=: socket() of a listed family is allowed, any other EAFNOSUPPORT.
const socketNr = resolve('socket') as number;
for (const family of spec.socketFamilies) ruleAdd(ctx, SCMP_ACT_ALLOW, socketNr, 1, [{ arg: 0, op: SCMP_CMP_EQ, datum_a: family, datum_b: 0 }]);
if (spec.socketFamilies.length === 1) ruleAdd(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), socketNr, 1, [{ arg: 0, op: SCMP_CMP_NE, datum_a: spec.socketFamilies[0], datum_b: 0 }]);
const rc = load(ctx) as number;
if (rc < 0) throw new Error(`seccomp_load failed: ${rc}`);
for (const fd of [0, 1, 2]) setCloexec(fd, false); // Node marks them close-on-exec
execve(program, [program, ...args], process.env);
