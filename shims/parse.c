/* The pure parsers of the shims' inputs: scripts, QEMU's argv, the domain XML; see parse.h. */
#define _GNU_SOURCE
#include "parse.h"

#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *script_field(const char *text, const char *path, const char *key, char *why, size_t why_size)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, key, klen) && line[klen] == '=')
            return strndup(line + klen + 1, strcspn(line + klen + 1, "\n"));
    snprintf(why, why_size, "%s has no %s= line; run `virt-ebpf install` again", path, key);
    return NULL;
}

const char *option(int argc, char **argv, const char *opt)
{
    const char *v = NULL;
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], opt) || (argv[i][0] == '-' && !strcmp(argv[i] + 1, opt)))
            v = argv[i + 1];
    return v;
}

/* `-name guest=NAME,…` (or `-name NAME,…`); `,,` is an escaped comma. */
char *domain_name(int argc, char **argv)
{
    const char *v = option(argc, argv, "-name");
    if (!v)
        return NULL;
    if (!strncmp(v, "guest=", 6))
        v += 6;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (; *v && (*v != ',' || v[1] == ','); v += *v == ',' ? 2 : 1)
        buf_add(&b, v, 1);
    return b.p;
}

/* The fd of libvirt's listening monitor socket: `-chardev socket,id=charmonitor,fd=N,server=on,…`. */
int monitor_fd(int argc, char **argv)
{
    for (int i = 0; i + 1 < argc; i++) {
        if ((strcmp(argv[i], "-chardev") && strcmp(argv[i], "--chardev")) || strncmp(argv[i + 1], "socket,", 7))
            continue;
        const char *a = argv[i + 1];
        int fd = -1, server = 0, charmonitor = 0;
        char *copy = strdup(a), *save = NULL;
        for (char *o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
            charmonitor |= !strcmp(o, "id=charmonitor");
            server |= !strcmp(o, "server=on");
            if (!strncmp(o, "fd=", 3) && o[3] && strspn(o + 3, "0123456789") == strlen(o + 3))
                fd = atoi(o + 3);
        }
        free(copy);
        if (charmonitor && server && fd >= 0)
            return fd;
    }
    return -1;
}

/* s with every @virt-ebpf-fd:K@ replaced by the K-th received fd's number. */
char *with_fds(const char *s, const int *fds, int nfds)
{
    if (!strstr(s, "@virt-ebpf-fd:"))
        return (char *)s;
    struct buf b = {0};
    buf_add(&b, "", 0);
    while (*s) {
        const char *at = strstr(s, "@virt-ebpf-fd:");
        if (!at) {
            buf_str(&b, s);
            break;
        }
        buf_add(&b, s, at - s);
        char *endp;
        long k = strtol(at + 14, &endp, 10);
        if (*endp == '@' && endp > at + 14 && k >= 0 && k < nfds) {
            buf_fmt(&b, "%d", fds[k]);
            s = endp + 1;
        } else {
            buf_add(&b, at, 1);
            s = at + 1;
        }
    }
    return b.p;
}

/* The text between the first `start` and the next `stop`, malloc'd, or NULL. */
char *between(const char *text, const char *start, const char *stop)
{
    const char *i = strstr(text, start);
    const char *j = i ? strstr(i + strlen(start), stop) : NULL;
    return j ? strndup(i + strlen(start), j - i - strlen(start)) : NULL;
}

/* An attribute of our `<virt-ebpf:config …>` element (src/xml writes it), if one of `allowed`. */
const char *config_attr(const char *xml, const char *name, const char *const *allowed, const char *dflt)
{
    char *tag = between(xml, "<virt-ebpf:config", ">");
    const char *out = dflt;
    for (int q = 0; tag && q < 2 && out == dflt; q++) {
        char open[64], close[2] = {q ? '\'' : '"', 0};
        snprintf(open, sizeof open, " %s=%s", name, close);
        char *v = between(tag, open, close);
        for (int i = 0; v && allowed[i]; i++)
            if (!strcmp(v, allowed[i]))
                out = allowed[i];
        free(v);
    }
    free(tag);
    return out;
}

/* The text of the domain's <uuid>, blanks trimmed, malloc'd, or NULL. */
char *domain_uuid(const char *xml)
{
    const char *dom = strstr(xml, "<domain");
    char *uuid = between(dom ? dom : xml, "<uuid>", "</uuid>");
    if (!uuid)
        return NULL;
    char *u = uuid + strspn(uuid, " \t\r\n");
    u[strcspn(u, " \t\r\n")] = 0;
    memmove(uuid, u, strlen(u) + 1);
    return uuid;
}
