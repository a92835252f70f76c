/* The growing strings and the JSON looks the shims need; see json.h. */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void grow(struct buf *b, size_t n)
{
    if (b->len + n + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        static const char oom[] = "virt-ebpf: out of memory\n";
        ssize_t w = write(2, oom, sizeof oom - 1);
        (void)w;
        _exit(1);
    }
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

const char *json_skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

const char *json_value_end(const char *p, const char *end)
{
    int depth = 0;
    for (; p < end; p++) {
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\')
                    p++;
            if (depth == 0)
                return p < end ? p + 1 : end;
        } else if (*p == '{' || *p == '[') {
            depth++;
        } else if (*p == '}' || *p == ']') {
            if (--depth <= 0)
                return depth == 0 ? p + 1 : p;
        } else if (depth == 0 && (*p == ',' || *p == ' ' || *p == '\r' || *p == '\n')) {
            return p;
        }
    }
    return end;
}

const char *json_member(const char *obj, const char *end, const char *key)
{
    if (!obj || obj >= end || *obj != '{')
        return NULL;
    size_t klen = strlen(key);
    const char *p = json_skip_ws(obj + 1, end);
    while (p < end && *p == '"') {
        const char *k = p + 1, *q = json_value_end(p, end);
        const char *colon = json_skip_ws(q, end);
        if (colon >= end || *colon != ':')
            return NULL;
        const char *v = json_skip_ws(colon + 1, end);
        if ((size_t)(q - 1 - k) == klen && !memcmp(k, key, klen))
            return v;
        p = json_skip_ws(json_value_end(v, end), end);
        if (p < end && *p == ',')
            p = json_skip_ws(p + 1, end);
    }
    return NULL;
}

const char *json_first(const char *v, const char *end)
{
    if (!v || v >= end || *v != '[')
        return NULL;
    const char *p = json_skip_ws(v + 1, end);
    return p < end && *p != ']' ? p : NULL;
}

const char *json_next(const char *v, const char *end)
{
    const char *p = json_skip_ws(json_value_end(v, end), end);
    return p < end && *p == ',' ? json_skip_ws(p + 1, end) : NULL;
}

static int hex4(const char *p, const char *end)
{
    int v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1000);
    }
    return v < 0 ? -1 : v;
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
    if (!v || v >= end || *v != '"')
        return NULL;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (const char *p = v + 1; p < end; p++) {
        if (*p == '"')
            return b.p;
        if (*p != '\\') {
            buf_add(&b, p, 1);
            continue;
        }
        if (++p >= end)
            break;
        const char *simple = strchr("\"\\/bfnrt", *p);
        if (simple && *p) {
            static const char out[] = "\"\\/\b\f\n\r\t";
            buf_add(&b, &out[simple - "\"\\/bfnrt"], 1);
        } else if (*p == 'u') {
            int cp = hex4(p + 1, end);
            if (cp < 0)
                break;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && end - p > 6 && p[1] == '\\' && p[2] == 'u') {
                int lo = hex4(p + 3, end);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            utf8(&b, cp);
        } else {
            break;
        }
    }
    free(b.p);
    return NULL;
}
