/*
 * What every fuzz target of the shims' parsers shares (test/fuzz/<target>.c, built by
 * scripts/build-fuzz.sh with libFuzzer, ASan and UBSan). The input is copied into a block of
 * exactly its size, so ASan reports any read past it: the parsers that take [start, end) get no
 * NUL after the bytes; those that take a C string get exactly one. A broken contract (a result
 * the parser's header rules out) aborts with one line naming it, which libFuzzer reports as a
 * crash with the input that caused it.
 */
#ifndef VEBPF_FUZZ_H
#define VEBPF_FUZZ_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* data as a block of exactly size bytes (for an empty input ASan may not report a read of the
 * block malloc(0) gives: fuzz_in's bounds check does). */
static inline char *fuzz_exact(const uint8_t *data, size_t size)
{
    char *p = malloc(size);
    if (!p && size)
        abort();
    if (size)
        memcpy(p, data, size);
    return p;
}

/* data as a C string of exactly size + 1 bytes (a NUL inside the data ends it early, as it
 * would in a file read into a C string). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *p = malloc(size + 1);
    if (!p)
        abort();
    memcpy(p, data, size);
    p[size] = 0;
    return p;
}

#define contract(cond, ...)                                      \
    do {                                                         \
        if (!(cond)) {                                           \
            fprintf(stderr, "contract broken: " __VA_ARGS__);    \
            fprintf(stderr, " (%s:%d: %s)\n", __FILE__, __LINE__, #cond); \
            abort();                                             \
        }                                                        \
    } while (0)

/* A pointer a parser returned into [start, end): read as its callers read it, then checked. */
static inline void fuzz_in(const char *p, const char *start, const char *end, const char *what)
{
    if (!p)
        return;
    volatile char c = *p;
    (void)c;
    contract(p >= start && p < end, "%s returned a pointer %td bytes from the start of a %td-byte input", what, p - start, end - start);
}
#endif
