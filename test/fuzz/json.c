/*
 * Fuzz target: the JSON looks of shims/json.c (json_skip_ws, json_value_end, json_member,
 * json_first, json_next, json_string, json_int, buf_json) on one line of bytes, as the shims
 * use them on broker replies, state files and QMP lines. It walks the value at the start of the input through
 * the members the shims ask for and every array, checks each pointer against [start, end), and
 * holds json_string to an independent reading of a JSON string (RFC 8259, plus the shims' rules:
 * no \u0000, a surrogate only as a high+low pair).
 */
#include "fuzz.h"
#include "json.h"

/* The members the shims ask for (broker replies, state files, QMP lines). */
static const char *const KEYS[] = {"ok", "error", "message", "code", "remedy", "argv", "contexts", "property", "name", "fds",
                                   "stdout", "stderr", "policy", "hotplug", "execute", "arguments", "driver", "rss", "id",
                                   "ebpf-rss-fds", "return", ""};

static long hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The length json_string's result must have for the string at p, or -1 if it must be NULL. */
static long expected_length(const char *p, const char *end)
{
    if (p >= end || *p != '"')
        return -1;
    long len = 0;
    for (p++; p < end; p++) {
        unsigned char c = *p;
        if (c == '"')
            return len;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            len++;
            continue;
        }
        if (++p >= end)
            return -1;
        if (*p && strchr("\"\\/bfnrt", *p)) {
            len++;
            continue;
        }
        if (*p != 'u')
            return -1;
        long cp = hex4(p + 1, end);
        p += 4;
        if (cp <= 0 || (cp >= 0xdc00 && cp <= 0xdfff))
            return -1;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            long lo = end - p > 2 && p[1] == '\\' && p[2] == 'u' ? hex4(p + 3, end) : -1;
            if (lo < 0xdc00 || lo > 0xdfff)
                return -1;
            p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        len += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    }
    return -1;
}

static void check_string(const char *v, const char *start, const char *end)
{
    char *s = json_string(v, end);
    long want = expected_length(v, end);
    contract(!s == (want < 0), "json_string %s the string at byte %td", s ? "accepted" : "refused", v - start);
    if (!s)
        return;
    contract((long)strlen(s) == want, "json_string gave %zu bytes for the string at byte %td, not %ld", strlen(s), v - start, want);
    contract(json_value_end(v, end) != NULL, "json_string read the string at byte %td but json_value_end did not", v - start);
    /* buf_json writes what json_string reads back */
    struct buf b = {0};
    buf_json(&b, s);
    char *again = json_string(b.p, b.p + b.len);
    contract(again && !strcmp(again, s), "buf_json then json_string changed the string at byte %td", v - start);
    contract(json_value_end(b.p, b.p + b.len) == b.p + b.len, "buf_json wrote more than one value");
    free(again);
    free(b.p);
    free(s);
}

/* The bytes just before v are `"` `:` (the end of a key; blanks allowed around the colon). */
static int after_key(const char *v, const char *start)
{
    const char *p = v - 1;
    while (p >= start && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p--;
    if (p < start || *p != ':')
        return 0;
    for (p--; p >= start && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'); p--)
        ;
    return p >= start && *p == '"';
}

static void walk(const char *v, const char *start, const char *end, int depth)
{
    if (!v || depth > 6)
        return;
    const char *e = json_value_end(v, end);
    contract(!e || (e > v && e <= end), "json_value_end returned %td for a value at %td", e - start, v - start);
    if (*v == '"')
        check_string(v, start, end);
    long i;
    if (json_int(v, end, -1000, 1000, &i)) {  /* the same number strtol reads in it */
        contract(e && e - v < 64, "json_int read a number that is no value");
        char text[64], *stop;
        memcpy(text, v, e - v);
        text[e - v] = 0;
        contract(strtol(text, &stop, 10) == i && !*stop && i >= -1000 && i <= 1000, "json_int read %ld in %s", i, text);
    }
    const char *n = json_next(v, end);
    fuzz_in(n, start, end, "json_next");
    contract(!n || n > v, "json_next went back");
    if (*v == '{') {
        for (size_t i = 0; i < sizeof KEYS / sizeof *KEYS; i++) {
            const char *m = json_member(v, end, KEYS[i]);
            fuzz_in(m, start, end, "json_member");
            if (!m)
                continue;
            contract(e != NULL, "json_member found \"%s\" in an object json_value_end calls malformed", KEYS[i]);
            contract(m < e, "json_member's value of \"%s\" is past its object", KEYS[i]);
            contract(after_key(m, start), "json_member's value of \"%s\" does not follow a key", KEYS[i]);
            walk(m, start, end, depth + 1);
        }
    } else if (*v == '[') {
        const char *prev = v;
        int k = 0;
        for (const char *x = json_first(v, end); x; x = json_next(x, end), k++) {
            fuzz_in(x, start, end, k ? "json_next" : "json_first");
            contract(x > prev, "the array walk went back");
            contract(e != NULL && x < e, "an element past its array (or of a malformed one)");
            prev = x;
            if (k < 64)
                walk(x, start, end, depth + 1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = fuzz_exact(data, size);
    const char *end = in + size;
    const char *root = json_skip_ws(in, end);
    fuzz_in(root, in, end, "json_skip_ws");
    walk(root, in, end, 0);
    /* json_string at the first few quotes anywhere (inside other strings too) */
    int quotes = 0;
    for (const char *p = in; p < end && quotes < 16; p++)
        if (*p == '"') {
            quotes++;
            check_string(p, in, end);
        }
    free(in);
    return 0;
}
