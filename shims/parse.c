/* The pure parsers of the shims' inputs: scripts, QEMU's argv, the domain XML; see parse.h. */
#define _GNU_SOURCE
#include "parse.h"

#include "json.h"
#include "vebpf-constants.h"

#include <limits.h>
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

/* The next option of a QEMU `key=value,…` list at *s (`,,` is a comma inside it), malloc'd, and
 * *s moved past it; NULL past the last. */
static char *next_opt(const char **s)
{
    const char *p = *s;
    if (!p)
        return NULL;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (; *p && (*p != ',' || p[1] == ','); p += *p == ',' ? 2 : 1)
        buf_add(&b, p, 1);
    *s = *p ? p + 1 : NULL;
    return b.p;
}

char *domain_name(int argc, char **argv)
{
    const char *s = option(argc, argv, "-name");
    char *name = NULL, *o;
    for (int first = 1; (o = next_opt(&s)); first = 0, free(o)) {
        const char *v = !strncmp(o, "guest=", 6) ? o + 6 : first && !strchr(o, '=') ? o : NULL;  /* guest is the implied key */
        if (v) {
            free(name);
            name = strdup(v);
        }
    }
    return name;
}

/* A file descriptor number: decimal digits only, at most INT_MAX; else -1. */
static int fd_number(const char *s)
{
    int n = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        int d = *s - '0';
        if (d < 0 || d > 9 || n > (INT_MAX - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    return n;
}

int monitor_fd(int argc, char **argv)
{
    for (int i = 0; i + 1 < argc; i++) {
        if (strcmp(argv[i], "-chardev") && strcmp(argv[i], "--chardev"))
            continue;
        const char *s = argv[i + 1];
        int fd = -1, server = 0, charmonitor = 0, socket = 0;
        char *o;
        for (int first = 1; (o = next_opt(&s)); first = 0, free(o)) {
            socket |= first && !strcmp(o, "socket");
            charmonitor |= !strcmp(o, "id=charmonitor");
            server |= !strcmp(o, "server=on");
            if (!strncmp(o, "fd=", 3))
                fd = fd_number(o + 3);
        }
        if (socket && charmonitor && server && fd >= 0)
            return fd;
    }
    return -1;
}

#define FD_MARK VEBPF_FD_MARK

char *with_fds(const char *s, const int *fds, int nfds)
{
    if (!strstr(s, FD_MARK))
        return (char *)s;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (const char *at; (at = strstr(s, FD_MARK));) {
        buf_add(&b, s, at - s);
        /* K as the broker writes it (src/broker/protocol.ts fdPlaceholder): decimal, no sign, no
         * leading zero, below VEBPF_MAX_FDS; anything else stays as it is */
        const char *d = at + strlen(FD_MARK);
        size_t n = strspn(d, "0123456789");
        int k = n >= 1 && n <= 3 && d[n] == '@' && (d[0] != '0' || n == 1) ? atoi(d) : -1;
        if (k >= 0 && k < nfds) {
            buf_fmt(&b, "%d", fds[k]);
            s = d + n + 1;
        } else {
            buf_add(&b, at, 1);
            s = at + 1;
        }
    }
    buf_str(&b, s);
    return b.p;
}

/* The text between the first `start` and the next `stop`, malloc'd, or NULL. */
char *between(const char *text, const char *start, const char *stop)
{
    const char *i = strstr(text, start);
    const char *j = i ? strstr(i + strlen(start), stop) : NULL;
    return j ? strndup(i + strlen(start), j - i - strlen(start)) : NULL;
}

/* Just past the name of the first `<virt-ebpf:config` start tag outside comments and CDATA
 * sections, or NULL. */
static const char *config_tag(const char *xml)
{
    static const char NAME[] = "<virt-ebpf:config";
    const size_t n = sizeof NAME - 1;
    for (const char *p = xml; (p = strchr(p, '<'));) {
        const char *skip_to = !strncmp(p, "<!--", 4) ? "-->" : !strncmp(p, "<![CDATA[", 9) ? "]]>" : NULL;
        if (skip_to) {
            p = strstr(p + 4, skip_to);
            if (!p)
                return NULL;
        } else if (!strncmp(p, NAME, n) && p[n] && strchr(" \t\r\n/>", p[n])) {
            return p + n;
        }
        p++;
    }
    return NULL;
}

int has_config(const char *xml)
{
    return config_tag(xml) != NULL;
}

const char *config_attr(const char *xml, const char *name, const char *const *allowed, const char *dflt)
{
    static const char BLANKS[] = " \t\r\n";
    size_t len = strlen(name);
    for (const char *p = config_tag(xml); p;) {  /* name = "value" or 'value' ... up to > or /> */
        p += strspn(p, BLANKS);
        const char *attr = p;
        p += strcspn(p, " \t\r\n=/>");
        size_t alen = p - attr;
        p += strspn(p, BLANKS);
        if (*p != '=')
            break;  /* the end of the tag, or not XML */
        p += 1 + strspn(p + 1, BLANKS);
        const char *end = *p == '"' || *p == '\'' ? strchr(p + 1, *p) : NULL;
        if (!end)
            break;
        if (alen == len && !strncmp(attr, name, len)) {
            for (int i = 0; allowed[i]; i++)
                if (strlen(allowed[i]) == (size_t)(end - p - 1) && !strncmp(p + 1, allowed[i], end - p - 1))
                    return allowed[i];
            break;
        }
        p = end + 1;
    }
    return dflt;
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
