/*
 * The growing strings and the JSON looks the shims need (shims/json.c): on broker replies, the
 * domain state file, and QMP lines inside QEMU. Pure: no I/O, no global state.
 */
#ifndef VEBPF_JSON_H
#define VEBPF_JSON_H
#include <stddef.h>

/* A growing string. */
struct buf {
    char *p;
    size_t len, cap;
};
void buf_add(struct buf *b, const char *s, size_t n);
void buf_str(struct buf *b, const char *s);
void buf_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string, quotes included. */
void buf_json(struct buf *b, const char *s);

/*
 * The JSON looks. Each reads the text in [start, end) that a caller holds (a broker reply, a
 * state file, one QMP line; no NUL needed after it) and never reads at or past end. Each pointer
 * one returns lies in [start, end) and is safe to read, except json_value_end's, which may be end
 * itself (just past a value that ends the text). Anything malformed (truncated, not RFC 8259
 * JSON, nested deeper than 64, a NULL argument) gives NULL. Each takes time linear in the text
 * it looks at and terminates on every input; test/fuzz holds them to this.
 */
/* The first byte at or after p that is not a JSON blank, or NULL when none is left before end. */
const char *json_skip_ws(const char *p, const char *end);
/* Just past the well-formed JSON value that starts at v (a string with its quotes, a number,
 * true/false/null, an object or array with all it holds), or NULL. */
const char *json_value_end(const char *v, const char *end);
/* The value of member `key` of the well-formed object at obj ('{'): NULL when obj is not one,
 * the key is absent, or it appears twice. Keys are compared unescaped. */
const char *json_member(const char *obj, const char *end, const char *key);
/* The first element of the well-formed array at v ('['), or NULL (none, or not an array). */
const char *json_first(const char *v, const char *end);
/* The element after the one at v (`v , next`), or NULL when v is the last or anything is
 * malformed. */
const char *json_next(const char *v, const char *end);
/* The string at v unescaped into a new malloc'd C string, or NULL: not a well-formed string, or
 * one a C string cannot carry as it is: \u0000, or a surrogate that is not a high one followed
 * by a low one (such a string is refused, not patched with U+FFFD: the shims pass names and
 * arguments on, and a changed one would name something else). Raw bytes are copied as they are. */
char *json_string(const char *v, const char *end);
/* Whether the value at v is an integer (no fraction, no exponent) in [min, max]; then *out holds it. */
int json_int(const char *v, const char *end, long min, long max, long *out);
#endif
