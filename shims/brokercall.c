/* One broker request and the JSON the shims need; see vebpf.h. */
#define _GNU_SOURCE
#include "vebpf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REPLY (64 << 20)

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

const char *broker_socket(void)
{
    static char configured[108];
    const char *s = getenv("VIRT_EBPF_BROKER_SOCKET");
    if (s && *s)
        return s;
    if (!configured[0]) {  /* the socket the broker is configured with, else the default */
        char *config = read_file(VEBPF_CONFIG, 1 << 20);
        const char *end = config ? config + strlen(config) : NULL;
        char *path = config ? json_string(json_member(json_skip_ws(config, end), end, "socket"), end) : NULL;
        snprintf(configured, sizeof configured, "%s", path && path[0] == '/' && strlen(path) < sizeof configured ? path : VEBPF_BROKER_SOCKET);
        free(path);
        free(config);
    }
    return configured;
}

static enum broker_result unreachable(char *why, size_t size, const char *detail)
{
    snprintf(why, size, "cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s", broker_socket(), detail, VEBPF_REMEDY);
    return BROKER_UNREACHABLE;
}

enum broker_result broker_call(const char *request, size_t len, int timeout_s, char **reply, int *fds, int *nfds, char *why, size_t why_size)
{
    *nfds = 0;
    *reply = NULL;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return unreachable(why, why_size, strerror(errno));
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", broker_socket());
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(s);
        return unreachable(why, why_size, strerror(errno));
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = send(s, request + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) {
            close(s);
            return unreachable(why, why_size, strerror(errno));
        }
        off += w;
    }
    struct buf in = {0};
    char chunk[65536];
    enum broker_result r = BROKER_OK;
    while (!in.p || !memchr(in.p, '\n', in.len)) {
        union {
            char b[CMSG_SPACE(sizeof(int) * VEBPF_MAX_FDS)];
            struct cmsghdr align;
        } u;
        struct iovec iov = {chunk, sizeof chunk};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
        ssize_t n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
        for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL; c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (*nfds < VEBPF_MAX_FDS)
                    fds[(*nfds)++] = fd;
                else
                    close(fd);
            }
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            char d[64];
            snprintf(d, sizeof d, "no reply within %d ms", timeout_s * 1000);
            r = unreachable(why, why_size, d);
        } else if (n < 0) {
            r = unreachable(why, why_size, strerror(errno));
        } else if (n == 0) {
            r = unreachable(why, why_size, "the broker closed the connection without a reply");
        } else if (in.len + n > MAX_REPLY) {
            snprintf(why, why_size, "broker: a reply longer than %d bytes (BROKER_PROTOCOL); check `virt-ebpf doctor`", MAX_REPLY);
            r = BROKER_REFUSED;
        }
        if (r != BROKER_OK)
            break;
        buf_add(&in, chunk, n);
    }
    close(s);
    if (r == BROKER_OK) {
        const char *end = in.p + (memchr(in.p, '\n', in.len) ? (size_t)((char *)memchr(in.p, '\n', in.len) - in.p) : in.len);
        const char *ok = json_member(json_skip_ws(in.p, end), end, "ok");
        if (!ok || strncmp(ok, "true", 4)) {
            const char *err = json_member(json_skip_ws(in.p, end), end, "error");
            char *msg = json_string(json_member(err, end, "message"), end);
            char *code = json_string(json_member(err, end, "code"), end);
            char *rem = json_string(json_member(err, end, "remedy"), end);
            snprintf(why, why_size, "broker: %s (%s); %s", msg ? msg : "refused", code ? code : "?", rem ? rem : "check `virt-ebpf doctor`");
            free(msg), free(code), free(rem);
            r = BROKER_REFUSED;
        }
    }
    if (r != BROKER_OK) {
        for (int i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
        free(in.p);
        return r;
    }
    *reply = in.p;
    return BROKER_OK;
}

char *ascii_lower(const char *s)
{
    char *out = strdup(s);
    for (char *p = out; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p += 'a' - 'A';
    return out;
}

char *domain_state_path(const char *uuid)
{
    if (!uuid || strlen(uuid) != 36 || strspn(uuid, "0123456789abcdefABCDEF-") != 36)
        return NULL;
    const char *dir = getenv("VIRT_EBPF_DOMAIN_STATE_DIR");
    char *lower = ascii_lower(uuid);
    struct buf b = {0};
    buf_fmt(&b, "%s/%s.json", dir && *dir ? dir : VEBPF_STATE_DIR, lower);
    free(lower);
    return b.p;
}

/* All of fd (NUL-terminated, malloc'd; reading stops past max bytes), then closes it. */
static char *read_fd(int fd, size_t max)
{
    struct buf b = {0};
    char chunk[8192];
    ssize_t n;
    buf_add(&b, "", 0);
    while ((n = read(fd, chunk, sizeof chunk)) > 0 && b.len < max)
        buf_add(&b, chunk, n);
    close(fd);
    return b.p;
}

char *read_file(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? NULL : read_fd(fd, max);
}

char *read_script(const char *path, char *why, size_t why_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(why, why_size, "cannot read %s: %s; run `virt-ebpf install` again", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (st.st_uid != 0 || (st.st_mode & 022)) {
        snprintf(why, why_size, "%s is not root's or others than root may write it: not trusted; run `virt-ebpf install` again", path);
        close(fd);
        return NULL;
    }
    return read_fd(fd, 1 << 16);
}

char *script_field(const char *text, const char *path, const char *key, char *why, size_t why_size)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, key, klen) && line[klen] == '=')
            return strndup(line + klen + 1, strcspn(line + klen + 1, "\n"));
    snprintf(why, why_size, "%s has no %s= line; run `virt-ebpf install` again", path, key);
    return NULL;
}

static const char *policy_of(const char *json)
{
    if (!json)
        return NULL;
    const char *end = json + strlen(json);
    char *p = json_string(json_member(json_skip_ws(json, end), end, "policy"), end);
    const char *out = p && !strcmp(p, "strict") ? "strict" : p && !strcmp(p, "fallback") ? "fallback" : NULL;
    free(p);
    return out;
}

const char *resolve_policy(const char *state)
{
    const char *p = policy_of(state);
    if (p)
        return p;
    char *config = read_file(VEBPF_CONFIG, 1 << 20);
    p = policy_of(config);
    free(config);
    return p ? p : "strict";
}
