/*
 * The pure parts of the hot-plug shim (shims/qmp-preload.c): reading the broker's device-plan
 * reply, following QEMU's replies as they are written, and naming a command by its id. No I/O,
 * no global state: test/fuzz links them without QEMU.
 */
#ifndef VEBPF_SPLICE_H
#define VEBPF_SPLICE_H
#include <stddef.h>

#include "vebpf-constants.h"

#define SPLICE_MAX VEBPF_MAX_SPLICE
#define SPLICE_MAX_FDS VEBPF_MAX_DEVICE_FDS
#define REPLY_LINE_MAX 8192   /* a reply line longer than this is not a device_add's: not kept */
#define ID_MAX 128

struct device_plan {
    long at;        /* byte offset in the line where insert goes; -1: the line passes as it is */
    char *insert;   /* malloc'd, the fd numbers in; NULL when at is -1 */
    char *said;     /* malloc'd line for QEMU's log, or NULL */
};

/*
 * The broker's device-plan reply [reply, end) for a line of line_len bytes, with the nfds fds
 * that came with it: 0 and *p filled (malloc'd strings), or -1 when the reply does not fit (an
 * offset outside the line, fds it does not account for, a splice over SPLICE_MAX or naming an
 * fd it did not send); nothing is left allocated then.
 */
int device_plan_parse(const char *reply, const char *end, size_t line_len, const int *fds, int nfds, struct device_plan *p);
void device_plan_free(struct device_plan *p);

/* A command's id as a key (its JSON text, a string re-escaped the one way buf_json writes it, so
 * "a\/b" and "a/b" name the same command) into out; "" when there is none or it does not fit. */
void command_id(const char *obj, const char *end, char out[ID_MAX]);

/* The reply lines QEMU writes to one connection, from bytes as sendmsg() takes them. */
struct reply_lines {
    char line[REPLY_LINE_MAX];
    size_t len;
    int skip;       /* the current line is longer than any reply we wait for */
};
/* Feed written bytes; `reply` is called for each complete reply line (one with "return" or
 * "error"; events and the greeting are not) with its id key and whether it is an error. */
void reply_lines_feed(struct reply_lines *r, const char *buf, size_t len, void (*reply)(void *ctx, const char *id, int error), void *ctx);
void reply_lines_reset(struct reply_lines *r);
#endif
