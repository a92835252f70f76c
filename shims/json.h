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

/* The value of member `key` of the object at `obj` ('{'), or NULL (strings and nesting walked). */
const char *json_member(const char *obj, const char *end, const char *key);
/* The string value at v, unescaped into a new malloc'd string, or NULL when v is not a string. */
char *json_string(const char *v, const char *end);
/* The first element of the array at v ('['), or NULL; json_next: the element after the one at v, or NULL. */
const char *json_first(const char *v, const char *end);
const char *json_next(const char *v, const char *end);
const char *json_skip_ws(const char *p, const char *end);
/* Just past the JSON value at v (a string with its quotes, a number, an object…). */
const char *json_value_end(const char *v, const char *end);
#endif
