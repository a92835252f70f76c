/**
 * Where the broker's niced load (niced-load.c) is built: beside the module that calls it
 * (libbpf.ts), relative to the checkout or the install prefix. scripts/build-shims.sh writes it.
 */
export const NICED_LOAD_FILE = 'dist/src/bpf/vebpf-niced-load.so';
