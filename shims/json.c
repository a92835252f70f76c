/* The growing strings and the JSON looks the shims need; see json.h. */
#include "json.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JSON_MAX_DEPTH 64  /* nesting the walk follows; deeper is malformed here */

static void out_of_memory(void)
{
    static const char oom[] = "virt-ebpf: out of memory\n";
    ssize_t w = write(2, oom, sizeof oom - 1);
    (void)w;
    _exit(1);
}

static void grow(struct buf *b, size_t n)
{
    if (n > SIZE_MAX / 4 - b->len)
        out_of_memory();
    if (b->len + n + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        out_of_memory();
    b->p = p;
    b->cap = cap;
}

void buf_add(struct buf *b, const char *s, size_t n)
{
    grow(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

void buf_fmt(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        out_of_memory();  /* (vsnprintf fails only for lack of memory or a result over INT_MAX) */
    grow(b, n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, n + 1, fmt, ap);
    va_end(ap);
    b->len += n;
}

void buf_json(struct buf *b, const char *s)
{
    buf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = *s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_add(b, e, 2);
        } else if (c < 0x20) {
            buf_fmt(b, "\\u%04x", c);
        } else {
            buf_add(b, (const char *)&c, 1);
        }
    }
    buf_add(b, "\"", 1);
}

static int blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

const char *json_skip_ws(const char *p, const char *end)
{
    if (!p || !end)
        return NULL;
    while (p < end && blank(*p))
        p++;
    return p < end ? p : NULL;
}

/* The value of four hex digits at [p, end), or -1. */
static long hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static const char ESCAPES[] = "\"\\/bfnrt", UNESCAPED[] = "\"\\/\b\f\n\r\t";

/* Just past the string at p ('"'), or NULL: unterminated, a raw control character, a bad escape. */
static const char *string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        unsigned char c = *p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c != '\\')
            continue;
        if (++p >= end)
            return NULL;
        if (*p == 'u') {
            if (hex4(p + 1, end) < 0)
                return NULL;
            p += 4;
        } else if (!*p || !strchr(ESCAPES, *p)) {
            return NULL;
        }
    }
    return NULL;
}

/* Just past one or more digits at p, or NULL. */
static const char *digits(const char *p, const char *end)
{
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p > s ? p : NULL;
}

/* -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)? */
static const char *number_end(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (!(p = digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = digits(p + 1, end)))
        return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        p = digits(p, end);
    }
    return p;
}

static const char *word_end(const char *p, const char *end, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && !memcmp(p, word, n) ? p + n : NULL;
}

static const char *value_end(const char *p, const char *end, int depth);

/* Just past the object or array at p, or NULL. */
static const char *container_end(const char *p, const char *end, int depth)
{
    char close = *p == '{' ? '}' : ']';
    if (depth >= JSON_MAX_DEPTH)
        return NULL;
    p = json_skip_ws(p + 1, end);
    if (p && *p == close)
        return p + 1;
    while (p) {
        if (close == '}') {  /* "key" : */
            if (*p != '"' || !(p = json_skip_ws(string_end(p, end), end)) || *p != ':')
                return NULL;
            p = json_skip_ws(p + 1, end);
        }
        if (!(p = json_skip_ws(value_end(p, end, depth + 1), end)))
            return NULL;
        if (*p == close)
            return p + 1;
        p = *p == ',' ? json_skip_ws(p + 1, end) : NULL;
    }
    return NULL;
}

static const char *value_end(const char *p, const char *end, int depth)
{
    if (!p || p >= end)
        return NULL;
    switch (*p) {
    case '"':
        return string_end(p, end);
    case '{':
    case '[':
        return container_end(p, end, depth);
    case 't':
        return word_end(p, end, "true");
    case 'f':
        return word_end(p, end, "false");
    case 'n':
        return word_end(p, end, "null");
    default:
        return *p == '-' || (*p >= '0' && *p <= '9') ? number_end(p, end) : NULL;
    }
}

const char *json_value_end(const char *v, const char *end)
{
    return end ? value_end(v, end, 0) : NULL;
}

/* Whether the key at k (a well-formed string) reads as key once unescaped. */
static int key_is(const char *k, const char *end, const char *key)
{
    const char *q = string_end(k, end);
    size_t n = strlen(key);
    if (!memchr(k + 1, '\\', q - 1 - (k + 1)))  /* the common case: no escape, no copy */
        return (size_t)(q - 2 - k) == n && !memcmp(k + 1, key, n);
    char *s = json_string(k, end);
    int is = s && !strcmp(s, key);
    free(s);
    return is;
}

const char *json_member(const char *obj, const char *end, const char *key)
{
    if (!obj || !end || obj >= end || *obj != '{' || !key || !json_value_end(obj, end))
        return NULL;
    /* well-formed: each step below finds what it expects */
    const char *found = NULL;
    for (const char *p = json_skip_ws(obj + 1, end); p && *p == '"';) {
        const char *colon = json_skip_ws(string_end(p, end), end);
        const char *v = json_skip_ws(colon + 1, end);
        if (key_is(p, end, key)) {
            if (found)
                return NULL;  /* a key twice: which one the writer meant is not for us to guess */
            found = v;
        }
        p = json_skip_ws(value_end(v, end, 1), end);
        p = p && *p == ',' ? json_skip_ws(p + 1, end) : NULL;
    }
    return found;
}

const char *json_first(const char *v, const char *end)
{
    if (!v || !end || v >= end || *v != '[' || !json_value_end(v, end))
        return NULL;
    const char *p = json_skip_ws(v + 1, end);
    return p && *p != ']' ? p : NULL;
}

const char *json_next(const char *v, const char *end)
{
    const char *p = json_skip_ws(json_value_end(v, end), end);
    if (!p || *p != ',')
        return NULL;
    p = json_skip_ws(p + 1, end);
    return json_value_end(p, end) ? p : NULL;
}

int json_int(const char *v, const char *end, long min, long max, long *out)
{
    const char *e = json_value_end(v, end);
    if (!e || (*v != '-' && (*v < '0' || *v > '9')) || memchr(v, '.', e - v) || memchr(v, 'e', e - v) || memchr(v, 'E', e - v))
        return 0;
    long n = 0;
    for (const char *p = *v == '-' ? v + 1 : v; p < e; p++) {
        if (n > (LONG_MAX - 9) / 10)
            return 0;
        n = n * 10 + (*p - '0');
    }
    n = *v == '-' ? -n : n;
    if (n < min || n > max)
        return 0;
    *out = n;
    return 1;
}

static void utf8(struct buf *b, unsigned cp)
{
    char o[4];
    int n;
    if (cp < 0x80) {
        o[0] = cp, n = 1;
    } else if (cp < 0x800) {
        o[0] = 0xc0 | cp >> 6, o[1] = 0x80 | (cp & 0x3f), n = 2;
    } else if (cp < 0x10000) {
        o[0] = 0xe0 | cp >> 12, o[1] = 0x80 | (cp >> 6 & 0x3f), o[2] = 0x80 | (cp & 0x3f), n = 3;
    } else {
        o[0] = 0xf0 | cp >> 18, o[1] = 0x80 | (cp >> 12 & 0x3f), o[2] = 0x80 | (cp >> 6 & 0x3f), o[3] = 0x80 | (cp & 0x3f), n = 4;
    }
    buf_add(b, o, n);
}

char *json_string(const char *v, const char *end)
{
    if (!v || !end || v >= end || *v != '"')
        return NULL;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (const char *p = v + 1; p < end; p++) {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
            p++;
        buf_add(&b, run, p - run);
        if (p >= end || (unsigned char)*p < 0x20)
            break;
        if (*p == '"')
            return b.p;
        if (++p >= end)
            break;
        const char *simple = *p ? strchr(ESCAPES, *p) : NULL;
        if (simple) {
            buf_add(&b, &UNESCAPED[simple - ESCAPES], 1);
            continue;
        }
        long cp = *p == 'u' ? hex4(p + 1, end) : -1;
        if (cp <= 0 || (cp >= 0xdc00 && cp <= 0xdfff))
            break;  /* not an escape, not four hex digits, \u0000, a low surrogate alone */
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {  /* a high surrogate: its low one must follow */
            long lo = end - p > 2 && p[1] == '\\' && p[2] == 'u' ? hex4(p + 3, end) : -1;
            if (lo < 0xdc00 || lo > 0xdfff)
                break;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
        utf8(&b, cp);
    }
    free(b.p);
    return NULL;
}
