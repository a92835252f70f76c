/*
 * virt-ebpf QMP hot-plug shim, loaded into the emulator with LD_PRELOAD by the wrapper
 * (shims/wrapper.c) for an enabled domain. It watches libvirt's monitor connection from inside
 * QEMU, so the thousands of QMP bytes libvirt exchanges while a domain starts take no extra
 * process hop: QEMU reads its monitor one byte per recvmsg(), and a byte that is not the start
 * of a line costs one compare here.
 *
 * At the start of each line it peeks at the whole line. A `device_add` of a virtio-net device
 * with rss on and no eBPF fds of its own gets them: one broker `acquire` (the broker loads its
 * own object; nothing from this process is loaded), the fds land in QEMU's fd table, and QEMU
 * reads the line with `"ebpf-rss-fds":["N0","N1","N2","N3"],` put after `"arguments":{`.
 * QEMU takes numeric fd names as fds of its own (monitor_fd_param). The original bytes stay
 * in the socket while the inserted ones are returned, so QEMU's poll() keeps seeing data.
 * When the broker cannot be asked: policy strict puts the reason where the fd names go, so
 * QEMU fails the device_add with our one-line message; fallback leaves the line as it is.
 * A device_add that fails after we gave fds: the reply (seen in sendmsg) names its id, and the
 * fds that still hold our objects (by BPF id) are closed again.
 *
 * Environment (read once, then removed so QEMU's children do not inherit it):
 *   VIRT_EBPF_QMP_LISTEN   libvirt's listening monitor socket (QEMU accepts libvirt on it,
 *                          again after a libvirtd restart)
 *   VIRT_EBPF_EMULATOR     the real emulator (the broker's trusted table key)
 *   VIRT_EBPF_POLICY       strict | fallback
 *   VIRT_EBPF_DOMAIN_NAME, VIRT_EBPF_DOMAIN_UUID
 * and, read by shims/brokercall.c at each broker call and left as it is (tests set it):
 *   VIRT_EBPF_BROKER_SOCKET (default /run/virt-ebpf/broker.sock)
 */
#define _GNU_SOURCE
#include "vebpf.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PEEK_MAX 65536
#define MAX_CONNS 4
#define MAX_FDS 8
#define MAX_PENDING 8

struct conn {
    int fd;               /* -1: free slot */
    long line_left;       /* bytes of the current line still to hand out as they are; 0: at a line start; -1: until '\n' */
    char *ins;            /* bytes to hand out in the middle of the current line */
    size_t ins_len, ins_off;
    size_t before_ins;    /* original bytes to hand out before them */
    size_t after_ins;     /* original bytes of the line after them */
};

struct pending {          /* a device_add we gave fds to, until its reply */
    char id[128];
    int nfds, fds[MAX_FDS];
    unsigned ids[MAX_FDS];
};

static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_close)(int);

static int listen_fd = -1;
static char emulator[4096], policy[16], dom_name[512], dom_uuid[64];
static struct conn conns[MAX_CONNS];
static struct pending pendings[MAX_PENDING];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char peekbuf[PEEK_MAX];
static int npending;  /* pendings in use: sendmsg() of any other fd looks only at this */

/* Built with -fvisibility=hidden: QEMU and its libraries see only the calls we wrap. */
#define WRAPPED __attribute__((visibility("default")))

static void say(const char *fmt, ...)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "virt-ebpf qmp[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(2, buf, n);
    (void)w;
}

static void take_env(const char *name, char *out, size_t size)
{
    const char *v = getenv(name);
    snprintf(out, size, "%s", v ? v : "");
    unsetenv(name);
}

__attribute__((constructor)) static void init(void)
{
    char lfd[16];
    take_env("VIRT_EBPF_QMP_LISTEN", lfd, sizeof lfd);
    take_env("VIRT_EBPF_EMULATOR", emulator, sizeof emulator);
    take_env("VIRT_EBPF_POLICY", policy, sizeof policy);
    take_env("VIRT_EBPF_DOMAIN_NAME", dom_name, sizeof dom_name);
    take_env("VIRT_EBPF_DOMAIN_UUID", dom_uuid, sizeof dom_uuid);
    unsetenv("LD_PRELOAD");
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;
    listen_fd = lfd[0] ? atoi(lfd) : -1;
    real_recvmsg = dlsym(RTLD_NEXT, "recvmsg");
    real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
    real_accept = dlsym(RTLD_NEXT, "accept");
    real_accept4 = dlsym(RTLD_NEXT, "accept4");
    real_close = dlsym(RTLD_NEXT, "close");
}

/* ---- which fds are libvirt's monitor connections ---- */

static struct conn *find(int fd)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].fd == fd)
            return &conns[i];
    return NULL;
}

static void watch(int fd)
{
    static int connections;
    if (connections++)  /* libvirtd restarted (or another client came after libvirt's) */
        say("libvirt connected to the monitor again (connection %d)", connections);
    pthread_mutex_lock(&lock);
    struct conn *c = find(fd);  /* a number reused after a close: start afresh */
    if (!c)
        c = find(-1);
    if (!c) {  /* more connections than libvirt ever makes: drop the oldest */
        c = &conns[0];
    }
    free(c->ins);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    pthread_mutex_unlock(&lock);
}

static int accepted(int sock, int fd)
{
    if (fd >= 0 && sock == listen_fd)
        watch(fd);
    return fd;
}

WRAPPED int accept(int sock, struct sockaddr *addr, socklen_t *len)
{
    return accepted(sock, real_accept(sock, addr, len));
}

WRAPPED int accept4(int sock, struct sockaddr *addr, socklen_t *len, int flags)
{
    return accepted(sock, real_accept4(sock, addr, len, flags));
}

/* A monitor connection QEMU closes is forgotten before its number can be reused: no other
 * stream is ever read as QMP lines. */
WRAPPED int close(int fd)
{
    if (listen_fd >= 0 && find(fd)) {
        pthread_mutex_lock(&lock);
        struct conn *c = find(fd);
        if (c) {
            free(c->ins);
            c->ins = NULL;
            c->fd = -1;
        }
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

/* ---- a few JSON looks at one line (shims/brokercall.c walks it) ---- */

/* The raw JSON of the value at v (a string with its quotes, a number…) into out, or "". */
static void raw_value(const char *v, const char *end, char *out, size_t size)
{
    size_t n = v ? (size_t)(json_value_end(v, end) - v) : 0;
    out[0] = 0;
    if (v && n < size) {
        memcpy(out, v, n);
        out[n] = 0;
    }
}

/* Whether the string value at v is one of `names`. */
static int string_in(const char *v, const char *end, const char *const *names)
{
    char *s = json_string(v, end);
    int hit = 0;
    for (int i = 0; s && names[i]; i++)
        hit |= !strcmp(s, names[i]);
    free(s);
    return hit;
}

static int wants_fds(const char *line, const char *end, const char *args)
{
    static const char *const device_add[] = {"device_add", NULL};
    static const char *const virtio_net[] = {"virtio-net", "virtio-net-pci", "virtio-net-pci-transitional",
                                             "virtio-net-pci-non-transitional", "virtio-net-device", "virtio-net-ccw", NULL};
    static const char *const on[] = {"on", "yes", "true", "y", NULL};
    const char *rss = json_member(args, end, "rss");
    return string_in(json_member(line, end, "execute"), end, device_add) && string_in(json_member(args, end, "driver"), end, virtio_net) &&
           rss && (!strncmp(rss, "true", 4) || string_in(rss, end, on)) &&
           !json_member(args, end, "ebpf-rss-fds") && !json_member(args, end, "ebpf_rss_fds");
}

/* ---- the broker ---- */

static unsigned bpf_id(int fd)
{
    union bpf_attr attr;
    struct bpf_prog_info info;  /* id comes first in prog, map and link info alike */
    memset(&attr, 0, sizeof attr);
    memset(&info, 0, sizeof info);
    attr.info.bpf_fd = fd;
    attr.info.info_len = sizeof info;
    attr.info.info = (unsigned long)&info;
    return syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof attr) == 0 ? info.id : 0;
}

/* One acquire; returns the number of fds (and fills fds), or -1 with a one-line reason. */
static int acquire(int *fds, char *why, size_t why_size)
{
    struct buf req = {0};
    buf_str(&req, "{\"v\":1,\"id\":1,\"op\":\"acquire\",\"emulator\":");
    buf_json(&req, emulator);
    buf_str(&req, ",\"count\":1,\"domain\":{");
    if (dom_name[0]) {
        buf_str(&req, "\"name\":");
        buf_json(&req, dom_name);
    }
    if (dom_uuid[0]) {
        buf_str(&req, dom_name[0] ? ",\"uuid\":" : "\"uuid\":");
        buf_json(&req, dom_uuid);
    }
    buf_str(&req, "}}\n");
    char *reply;
    int nfds;
    enum broker_result r = broker_call(req.p, req.len, 10, &reply, fds, &nfds, why, why_size);
    free(req.p);
    if (r != BROKER_OK)
        return -1;
    const char *end = reply + strlen(reply);
    const char *ctx = json_first(json_member(json_skip_ws(reply, end), end, "contexts"), end);  /* [{"property":{"name":…},"fds":4,…}] */
    char *prop = json_string(json_member(json_member(ctx, end, "property"), end, "name"), end);
    const char *cnt = json_member(ctx, end, "fds");
    int want = cnt ? atoi(cnt) : 0;
    if (!prop || strcmp(prop, "ebpf-rss-fds")) {
        snprintf(why, why_size, "hot-plug needs the ebpf-rss-fds property (QEMU >= 9.0); this emulator uses %s (HOTPLUG_UNSUPPORTED); "
                 "add the NIC to the domain XML and restart the domain", prop ? prop : "no fd property");
        want = -1;
    } else if (want < 1 || want > nfds || want > MAX_FDS) {  /* (QEMU takes 4; more would not fit our bookkeeping) */
        snprintf(why, why_size, "broker: sent %d fds for a context of %d (BROKER_PROTOCOL); check `virt-ebpf doctor`", nfds, want);
        want = -1;
    }
    for (int i = want < 0 ? 0 : want; i < nfds; i++)
        close(fds[i]);
    free(prop);
    free(reply);
    return want;
}

/* ---- the monitor connection: libvirt -> QEMU ---- */

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void remember(const char *id, const int *fds, int n)
{
    for (int i = 0; i < MAX_PENDING; i++) {
        struct pending *p = &pendings[i];
        if (p->nfds)
            continue;
        snprintf(p->id, sizeof p->id, "%s", id);
        p->nfds = n;
        __atomic_add_fetch(&npending, 1, __ATOMIC_SEQ_CST);
        for (int k = 0; k < n; k++) {
            p->fds[k] = fds[k];
            p->ids[k] = bpf_id(fds[k]);
        }
        return;
    }
}

/* Decide on a complete line [line, line+len) that QEMU is about to read. */
static void decide(struct conn *c, const char *line, size_t len)
{
    const char *end = line + len;
    c->line_left = len;
    if (!memmem(line, len, "device_add", 10))
        return;
    const char *args = json_member(line, end, "arguments");
    if (!args || *args != '{' || !wants_fds(line, end, args))
        return;
    char id[128], ins[20000], why[4096];
    int fds[VEBPF_MAX_FDS];
    char *devid = json_string(json_member(args, end, "id"), end);
    const char *dev = devid ? devid : "anon";
    raw_value(json_member(line, end, "id"), end, id, sizeof id);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int n = acquire(fds, why, sizeof why);
    if (n < 0) {
        if (strcmp(policy, "strict")) {
            say("%s; policy is fallback: %s is added without eBPF RSS steering", why, dev);
            free(devid);
            return;
        }
        say("device_add %s refused: %s", dev, why);
        char msg[4300];
        struct buf reason = {0};
        snprintf(msg, sizeof msg, "virt-ebpf: %s", why);
        buf_json(&reason, msg);
        /* QEMU counts the names first (4), then fails on the first: "File descriptor named '<our text>' has not been found" */
        snprintf(ins, sizeof ins, "\"ebpf-rss-fds\":[%s,%s,%s,%s],", reason.p, reason.p, reason.p, reason.p);
        free(reason.p);
    } else {
        char list[128] = "";
        for (int i = 0, k = 0; i < n; i++)
            k += snprintf(list + k, sizeof list - k, "%s%d", i ? "," : "", fds[i]);
        int k = snprintf(ins, sizeof ins, "\"ebpf-rss-fds\":[");
        for (int i = 0; i < n; i++)
            k += snprintf(ins + k, sizeof ins - k, "%s\"%d\"", i ? "," : "", fds[i]);
        snprintf(ins + k, sizeof ins - k, "],");
        say("device_add %s: eBPF RSS fds %s (broker %.1f ms)", dev, list, ms_since(&t0));
        if (id[0])
            remember(id, fds, n);
    }
    free(devid);
    c->ins = strdup(ins);
    if (!c->ins)
        return;
    c->ins_len = strlen(ins);
    c->ins_off = 0;
    c->before_ins = args + 1 - line;
    c->after_ins = len - c->before_ins;
    c->line_left = 0;
}

/* recvmsg with the iovecs cut to at most max bytes. */
static ssize_t recv_at_most(int fd, struct msghdr *msg, int flags, size_t max)
{
    struct iovec iov[64];
    size_t total = 0, k = 0;
    for (; k < msg->msg_iovlen && k < 64 && total < max; k++) {
        iov[k] = msg->msg_iov[k];
        if (iov[k].iov_len > max - total)
            iov[k].iov_len = max - total;
        total += iov[k].iov_len;
    }
    struct msghdr m = *msg;
    m.msg_iov = iov;
    m.msg_iovlen = k;
    ssize_t r = real_recvmsg(fd, &m, flags);
    msg->msg_controllen = m.msg_controllen;
    msg->msg_flags = m.msg_flags;
    return r;
}

static ssize_t give(struct conn *c, struct msghdr *msg)
{
    size_t n = 0;
    for (size_t k = 0; k < msg->msg_iovlen && c->ins_off < c->ins_len; k++) {
        size_t m = c->ins_len - c->ins_off;
        if (m > msg->msg_iov[k].iov_len)
            m = msg->msg_iov[k].iov_len;
        memcpy(msg->msg_iov[k].iov_base, c->ins + c->ins_off, m);
        c->ins_off += m;
        n += m;
    }
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
    if (c->ins_off == c->ins_len) {
        free(c->ins);
        c->ins = NULL;
        c->line_left = c->after_ins;
    }
    return n;
}

static ssize_t monitor_recv(struct conn *c, int fd, struct msghdr *msg, int flags)
{
    if (c->ins) {
        if (c->before_ins > 0) {
            ssize_t r = recv_at_most(fd, msg, flags, c->before_ins);
            if (r > 0)
                c->before_ins -= r;
            return r;
        }
        return give(c, msg);
    }
    if (c->line_left > 0) {
        ssize_t r = recv_at_most(fd, msg, flags, c->line_left);
        if (r > 0)
            c->line_left -= r;
        return r;
    }
    if (c->line_left < 0) {  /* a line too long to look at: hand it out up to its end */
        ssize_t r = real_recvmsg(fd, msg, flags);
        size_t seen = 0;
        for (size_t k = 0; r > 0 && k < msg->msg_iovlen && seen < (size_t)r; k++) {
            size_t m = (size_t)r - seen < msg->msg_iov[k].iov_len ? (size_t)r - seen : msg->msg_iov[k].iov_len;
            if (memchr(msg->msg_iov[k].iov_base, '\n', m))
                c->line_left = 0;  /* (bytes after that newline are not looked at: QEMU reads one at a time) */
            seen += m;
        }
        return r;
    }
    ssize_t n = recv(fd, peekbuf, PEEK_MAX, MSG_PEEK | MSG_DONTWAIT);
    if (n <= 0)
        return real_recvmsg(fd, msg, flags);  /* EOF, nothing yet, or an error: QEMU sees it as it is */
    char *nl = memchr(peekbuf, '\n', n);
    if (!nl) {
        if (n < PEEK_MAX && memmem(peekbuf, n, "device_add", 10)) {
            errno = EAGAIN;  /* the rest of this line is on its way: decide on the whole of it */
            return -1;
        }
        c->line_left = -1;
        return monitor_recv(c, fd, msg, flags);
    }
    decide(c, peekbuf, nl + 1 - peekbuf);
    return monitor_recv(c, fd, msg, flags);
}

WRAPPED ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    if (listen_fd < 0 || !find(fd))  /* (a racy look first: the lock is for the monitor's fds only) */
        return real_recvmsg(fd, msg, flags);
    pthread_mutex_lock(&lock);
    struct conn *c = find(fd);
    if (!c) {
        pthread_mutex_unlock(&lock);
        return real_recvmsg(fd, msg, flags);
    }
    ssize_t r = monitor_recv(c, fd, msg, flags);
    if (r == 0)
        c->fd = -1;  /* libvirt went away; QEMU accepts the next connection on listen_fd */
    int e = errno;
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}

/* ---- QEMU -> libvirt: the replies to device_adds we gave fds to ---- */

static void replied(const char *buf, size_t len)
{
    for (const char *ls = buf, *end = buf + len; ls < end;) {
        const char *le = memchr(ls, '\n', end - ls);
        le = le ? le : end;
        char id[128];
        raw_value(json_member(json_skip_ws(ls, le), le, "id"), le, id, sizeof id);
        for (int i = 0; id[0] && i < MAX_PENDING; i++) {
            struct pending *p = &pendings[i];
            if (!p->nfds || strcmp(p->id, id))
                continue;
            if (json_member(json_skip_ws(ls, le), le, "error")) {  /* QEMU did not keep them: close those still ours */
                int closed = 0;
                for (int k = 0; k < p->nfds; k++)
                    if (p->ids[k] && bpf_id(p->fds[k]) == p->ids[k]) {
                        close(p->fds[k]);
                        closed++;
                    }
                say("device_add %s failed: closed %d eBPF fds", p->id, closed);
            }
            p->nfds = 0;
            __atomic_sub_fetch(&npending, 1, __ATOMIC_SEQ_CST);
        }
        ls = le + 1;
    }
}

WRAPPED ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    if (__atomic_load_n(&npending, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&lock);
        if (find(fd))
            for (size_t k = 0; k < msg->msg_iovlen; k++)
                replied(msg->msg_iov[k].iov_base, msg->msg_iov[k].iov_len);
        pthread_mutex_unlock(&lock);
    }
    return real_sendmsg(fd, msg, flags);
}
