/**
 * koffi, as its prebuilt native module. The package's entry point (index.js) finds that module
 * for this platform, but on the way it evaluates its installer's helpers, which load Node's
 * https, tls, http, zlib and crypto: ~7 ms and ~2 MiB resident in every process that calls C
 * (the broker, every CLI command), and TLS code in a root daemon
 * that has no network. What the entry point adds to the native module are deprecated aliases
 * only (koffi.handle, koffi.callback, lib.cdecl and the like), none of which this code uses.
 *
 * So the native module is loaded from the package's build directory for this machine (glibc
 * first, then musl, as the entry point tries them); when none is there or its version is not
 * the package's, the entry point is loaded as it is.
 */
import { dirname } from 'node:path';
import { nativeKoffi, type Koffi } from './koffi-native';

const koffi: Koffi = nativeKoffi(dirname(require.resolve('koffi/package.json'))) ?? (require('koffi') as Koffi);
// An asynchronous call (the broker's loads: bpf_object__load on libuv's pool) gets the stack a
// synchronous one has, 1 MiB, not koffi's 128 KiB default, which has no guard page below it.
// koffi takes settings only before its first library is loaded, which is here.
koffi.config({ ...koffi.config(), async_stack_size: 1 << 20 });
export default koffi;
