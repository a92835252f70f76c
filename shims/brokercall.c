/* One broker request with its fds, and the files the shims read; see vebpf.h. */
#define _GNU_SOURCE
#include "vebpf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPLY (64 << 20)

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

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* The socket's send and receive timeouts set to what is left until deadline; 0 once it passed. */
static int arm(int s, long deadline)
{
    long left = deadline - now_ms();
    if (left <= 0)
        return 0;
    struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return 1;
}

int broker_connect(int timeout_ms)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    arm(s, now_ms() + timeout_ms);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", broker_socket());
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

/* Whether an error on a connection made earlier says the broker let it go before it read the
 * request (idle, evicted, restarted): the request is then sent again on a new one. */
static int let_go(int e)
{
    return e == EPIPE || e == ECONNRESET || e == ENOTCONN;
}

enum broker_result broker_call(const char *request, size_t len, int timeout_s, char **reply, int *fds, int *nfds, char *why, size_t why_size)
{
    return broker_call_on(-1, request, len, timeout_s, reply, fds, nfds, why, why_size);
}

enum broker_result broker_call_on(int early, const char *request, size_t len, int timeout_s, char **reply, int *fds, int *nfds, char *why, size_t why_size)
{
    *nfds = 0;
    *reply = NULL;
    /* One deadline for the whole call: connect, send and every read share it. */
    const long deadline = now_ms() + timeout_s * 1000L;
    char late[64];
    snprintf(late, sizeof late, "no reply within %d ms", timeout_s * 1000);
again:;
    int s = early;
    if (s < 0) {
        long left = deadline - now_ms();
        s = broker_connect(left > 0 ? (int)left : 1);
        if (s < 0)
            return unreachable(why, why_size, errno == EAGAIN ? late : strerror(errno));
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = arm(s, deadline) ? send(s, request + off, len - off, MSG_NOSIGNAL) : (errno = EAGAIN, -1);
        if (w <= 0) {
            int e = errno;
            close(s);
            if (early >= 0 && off == 0 && let_go(e)) {
                early = -1;
                goto again;
            }
            return unreachable(why, why_size, e == EAGAIN || e == EWOULDBLOCK ? late : strerror(e));
        }
        off += w;
    }
    struct buf in = {0};
    char chunk[65536];
    enum broker_result r = BROKER_OK;
    for (int line = 0; !line;) {
        union {
            char b[CMSG_SPACE(sizeof(int) * VEBPF_MAX_FDS)];
            struct cmsghdr align;
        } u;
        struct iovec iov = {chunk, sizeof chunk};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
        ssize_t n = arm(s, deadline) ? recvmsg(s, &m, MSG_CMSG_CLOEXEC) : (errno = EAGAIN, -1);
        int e = errno;
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
        if (early >= 0 && in.len == 0 && *nfds == 0 && (n == 0 || (n < 0 && let_go(e)))) {
            close(s);  /* the connection made earlier was let go before the request was read */
            early = -1;
            goto again;
        }
        if (n < 0 && (e == EAGAIN || e == EWOULDBLOCK)) {
            r = unreachable(why, why_size, late);
        } else if (n < 0) {
            r = unreachable(why, why_size, strerror(e));
        } else if (n == 0) {
            r = unreachable(why, why_size, "the broker closed the connection without a reply");
        } else if (in.len + n > MAX_REPLY) {
            snprintf(why, why_size, "broker: a reply longer than %d bytes (BROKER_PROTOCOL); check `virt-ebpf doctor`", MAX_REPLY);
            r = BROKER_REFUSED;
        }
        if (r != BROKER_OK)
            break;
        buf_add(&in, chunk, n);
        line = memchr(chunk, '\n', n) != NULL;  /* (only the new bytes: a long reply costs no rescans) */
    }
    close(s);
    if (r == BROKER_OK) {
        const char *end = in.p + (memchr(in.p, '\n', in.len) ? (size_t)((char *)memchr(in.p, '\n', in.len) - in.p) : in.len);
        const char *ok = json_member(json_skip_ws(in.p, end), end, "ok");
        const char *id = json_member(json_skip_ws(in.p, end), end, "id");
        if (early >= 0 && *nfds == 0 && ok && strncmp(ok, "true", 4) && id && id[0] == '0' && (id + 1 >= end || id[1] < '0' || id[1] > '9')) {
            /* The broker refused the connection made earlier when it came (id 0: before any
             * request; too many connections then, say): ask again on a new one. */
            free(in.p);
            early = -1;
            goto again;
        }
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

/* All of fd (NUL-terminated, malloc'd; *len its length), then closes it; NULL when it holds more
 * than max bytes (errno EFBIG) or cannot be read (errno says why). */
static char *read_fd(int fd, size_t max, size_t *len)
{
    struct buf b = {0};
    char chunk[8192];
    ssize_t n;
    buf_add(&b, "", 0);
    while ((n = read(fd, chunk, sizeof chunk)) > 0 && b.len + n <= max)
        buf_add(&b, chunk, n);
    int e = n < 0 ? errno : EFBIG;
    close(fd);
    if (n != 0) {
        free(b.p);
        errno = e;
        return NULL;
    }
    *len = b.len;
    return b.p;
}

char *read_file(const char *path, size_t max)
{
    size_t len;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? NULL : read_fd(fd, max, &len);
}

#define MAX_SCRIPT (64 << 10)

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
    size_t len;
    char *text = read_fd(fd, MAX_SCRIPT, &len);
    if (!text && errno == EFBIG)
        snprintf(why, why_size, "%s is over %d KiB: not a script `virt-ebpf install` wrote; run `virt-ebpf install` again", path, MAX_SCRIPT >> 10);
    else if (!text)
        snprintf(why, why_size, "cannot read %s: %s; run `virt-ebpf install` again", path, strerror(errno));
    else if (strlen(text) != len)
        snprintf(why, why_size, "%s holds a NUL byte: not a script `virt-ebpf install` wrote; run `virt-ebpf install` again", path);
    else
        return text;
    free(text);
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
