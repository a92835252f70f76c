/* The pure parts of the hot-plug shim; see splice.h. */
#define _GNU_SOURCE
#include "splice.h"
#include "json.h"
#include "parse.h"

#include <stdlib.h>
#include <string.h>

void device_plan_free(struct device_plan *p)
{
    free(p->insert);
    free(p->said);
    p->insert = p->said = NULL;
    p->at = -1;
}

/* text with the fd numbers in, malloc'd; NULL when a mark is left that names no fd we got. */
static char *named(const char *text, const int *fds, int nfds)
{
    char *out = with_fds(text, fds, nfds);
    if (out == text)
        out = strdup(text);
    if (out && strstr(out, "@virt-ebpf-fd:")) {
        free(out);
        return NULL;
    }
    return out;
}

int device_plan_parse(const char *reply, const char *end, size_t line_len, const int *fds, int nfds, struct device_plan *p)
{
    p->at = -1;
    p->insert = p->said = NULL;
    const char *obj = json_skip_ws(reply, end);
    long at = -1, want = -1;
    const char *at_v = json_member(obj, end, "at");
    if (!json_int(at_v, end, 1, (long)line_len - 1, &at))
        at = -1;
    json_int(json_member(obj, end, "fds"), end, 0, SPLICE_MAX_FDS, &want);
    char *insert = json_string(json_member(obj, end, "insert"), end);
    char *said = json_string(json_member(obj, end, "say"), end);
    int ok = want == nfds && ((at < 0 && !insert && nfds == 0) || (insert && at > 0));
    if (ok && insert) {
        p->insert = named(insert, fds, nfds);
        ok = p->insert && strlen(p->insert) <= SPLICE_MAX;
    }
    if (ok && said)
        p->said = named(said, fds, nfds);
    free(insert);
    free(said);
    if (!ok) {
        device_plan_free(p);
        return -1;
    }
    p->at = p->insert ? at : -1;
    return 0;
}

void command_id(const char *obj, const char *end, char out[ID_MAX])
{
    const char *v = json_member(obj, end, "id");
    const char *e = v ? json_value_end(v, end) : NULL;
    out[0] = 0;
    if (!v || !e)
        return;
    struct buf b = {0};
    char *s = *v == '"' ? json_string(v, end) : NULL;
    if (s)
        buf_json(&b, s);
    else if (*v != '"')
        buf_add(&b, v, e - v);
    if (b.p && b.len < ID_MAX)
        memcpy(out, b.p, b.len + 1);
    free(s);
    free(b.p);
}

void reply_lines_reset(struct reply_lines *r)
{
    r->len = 0;
    r->skip = 0;
}

void reply_lines_feed(struct reply_lines *r, const char *buf, size_t len, void (*reply)(void *ctx, const char *id, int error), void *ctx)
{
    for (const char *p = buf, *end = buf + len; p < end;) {
        const char *nl = memchr(p, '\n', end - p);
        size_t n = (nl ? nl : end) - p;
        if (!r->skip && r->len + n <= sizeof r->line) {
            memcpy(r->line + r->len, p, n);
            r->len += n;
        } else {
            r->skip = 1;
        }
        if (!nl)
            return;
        if (!r->skip) {
            const char *le = r->line + r->len;
            const char *obj = json_skip_ws(r->line, le);
            int error = json_member(obj, le, "error") != NULL;
            if (error || json_member(obj, le, "return")) {
                char id[ID_MAX];
                command_id(obj, le, id);
                reply(ctx, id, error);
            }
        }
        reply_lines_reset(r);
        p = nl + 1;
    }
}
