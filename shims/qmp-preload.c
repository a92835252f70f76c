/*
 * virt-ebpf QMP hot-plug shim, loaded into the emulator with LD_PRELOAD by the wrapper
 * (shims/wrapper.c) for an enabled domain, and for every domain under the host-wide mode. It reads along libvirt's monitor connection from
 * inside QEMU, so the thousands of QMP bytes libvirt exchanges while a domain starts take no
 * extra process hop: QEMU reads its monitor one byte per recvmsg(), and a byte that is not the
 * start of a line costs one compare here.
 *
 * It carries bytes and fds and decides nothing. At the start of each line it peeks at the whole
 * line; a line that names a kind's QMP command and marker (`device_add` and `rss`, from
 * src/argv/handoff.ts), or under the host-wide wrapper `device_add` and `virtio-net`, goes to
 * the broker (`device-plan`, src/broker/server.ts), which answers with the bytes to splice into the line, where, and the
 * fds those bytes name (`@virt-ebpf-fd:K@`, replaced here by the numbers the fds got in QEMU).
 * QEMU then reads the line with the splice in it; the original bytes stay in the socket while
 * the spliced ones are handed out, so QEMU's poll() keeps seeing data. Only when the broker
 * cannot be asked does the domain's policy apply here: strict splices the reason in where the
 * fd names go (QEMU fails the device_add with our one line), fallback leaves the line as it is.
 *
 * Bookkeeping for the fds it handed QEMU: until the device_add's reply, an entry remembers
 * them; the reply (read along QEMU's sendmsg, reassembled when it comes in pieces) either
 * confirms QEMU kept them or, on an error, has the fds that still hold our objects closed. A
 * connection that goes before its reply leaves its entries to be settled a moment later: fds
 * QEMU mapped (mmap of a map fd: QEMU took them) stay, the others are closed. The table is
 * bounded; the oldest entry is settled the same way when it is full.
 *
 * Threads: QEMU reads the monitor in its monitor I/O thread and answers from its main thread.
 * No lock is ever held across a broker call or a read/write of QEMU's; the one lock guards the
 * entry table and the connection slots, for a few compares.
 *
 * Environment (read once, then removed so QEMU's children do not inherit it):
 *   VIRT_EBPF_QMP_LISTEN   libvirt's listening monitor socket (QEMU accepts libvirt on it,
 *                          again after a libvirtd restart)
 *   VIRT_EBPF_EMULATOR     the real emulator (the broker's allowlist and pool key)
 *   VIRT_EBPF_POLICY       strict | fallback: what applies when the broker cannot be asked
 *   VIRT_EBPF_HOST_WIDE    1 under the host-wide wrapper: a virtio-net device_add that says
 *                          nothing of rss goes to the broker too (the host policy may give it rss)
 * and, read by shims/brokercall.c at each broker call and left as it is:
 *   VIRT_EBPF_BROKER_SOCKET (the wrapper sets it from the broker's config)
 */
#define _GNU_SOURCE
#include "vebpf.h"
#include "splice.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PEEK_MAX VEBPF_MAX_QMP_LINE  /* the longest line looked at */
#define MAX_CONNS 4
#define MAX_FDS SPLICE_MAX_FDS
#define MAX_PENDING 16
#define PIECES_WAIT_MS 1000   /* the longest a line in pieces is waited for */
#define SETTLE_MS 2000        /* entries of a closed connection are settled this much later */

struct conn {
    int fd;               /* -1: free slot */
    int gen;              /* bumped when the slot is reused: an entry of an older connection is orphaned */
    /* read side (QEMU's monitor thread) */
    long line_left;       /* bytes of the current line still to hand out as they are; 0: at a line start; -1: until '\n' */
    char *ins;            /* bytes to hand out in the middle of the current line */
    size_t ins_len, ins_off;
    size_t before_ins;    /* original bytes to hand out before them */
    size_t after_ins;     /* original bytes of the line after them */
    /* write side (QEMU's main thread): the reply line being written */
    struct reply_lines out;
};

struct pending {          /* a device_add we gave fds to, until its reply */
    int used;
    int conn_fd, conn_gen;
    char id[ID_MAX];      /* the command's id (command_id; "" when it had none) */
    int nfds, fds[MAX_FDS];
    unsigned ids[MAX_FDS];
    int taken;            /* QEMU mapped one of its maps: the fds are QEMU's now */
    long orphaned_ms;     /* when its connection went (0: still open) */
    long since_ms;
};

static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_close)(int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off_t);

static int listen_fd = -1;
static char emulator[4096], policy[16], host_wide[4];
static struct conn conns[MAX_CONNS];
static struct pending pendings[MAX_PENDING];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char peekbuf[PEEK_MAX];
static int npending;  /* entries in use: the mmap and sendmsg paths look only at this when 0 */

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

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
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
    take_env("VIRT_EBPF_HOST_WIDE", host_wide, sizeof host_wide);
    unsetenv("LD_PRELOAD");
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;
    listen_fd = lfd[0] ? atoi(lfd) : -1;
    real_recvmsg = dlsym(RTLD_NEXT, "recvmsg");
    real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
    real_accept = dlsym(RTLD_NEXT, "accept");
    real_accept4 = dlsym(RTLD_NEXT, "accept4");
    real_close = dlsym(RTLD_NEXT, "close");
    real_mmap = dlsym(RTLD_NEXT, "mmap");
    real_mmap64 = dlsym(RTLD_NEXT, "mmap64");
}

/* ---- fd bookkeeping ---- */

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

/* Close the entry's fds that still hold the objects we gave (a number QEMU reused is not ours). Lock held. */
static int close_ours(struct pending *p)
{
    int closed = 0;
    for (int k = 0; k < p->nfds; k++)
        if (p->ids[k] && bpf_id(p->fds[k]) == p->ids[k]) {
            real_close(p->fds[k]);
            closed++;
        }
    return closed;
}

static void forget(struct pending *p)  /* lock held */
{
    p->used = 0;
    if (__atomic_sub_fetch(&npending, 1, __ATOMIC_SEQ_CST) == 0)
        for (int i = 0; i < MAX_CONNS; i++)  /* output is not followed from here on: no stale piece */
            reply_lines_reset(&conns[i].out);
}

/* An entry whose reply will never be seen: fds QEMU mapped are QEMU's, the others go. Lock held. */
static void settle(struct pending *p, const char *why)
{
    if (p->taken) {
        forget(p);
        return;
    }
    int closed = close_ours(p);
    say("device_add %s: %s; closed %d eBPF fds QEMU never used", p->id[0] ? p->id : "(no id)", why, closed);
    forget(p);
}

/* Settle the entries of connections that went more than SETTLE_MS ago. Lock held. */
static void settle_orphans(void)
{
    long now = now_ms();
    for (int i = 0; i < MAX_PENDING; i++)
        if (pendings[i].used && pendings[i].orphaned_ms && now - pendings[i].orphaned_ms >= SETTLE_MS)
            settle(&pendings[i], "its connection went before the reply");
}

static void remember(const struct conn *c, const char *id, const int *fds, int n)
{
    pthread_mutex_lock(&lock);
    settle_orphans();
    struct pending *p = NULL, *oldest = NULL;
    for (int i = 0; i < MAX_PENDING && !p; i++) {
        if (!pendings[i].used)
            p = &pendings[i];
        else if (!oldest || pendings[i].since_ms < oldest->since_ms)
            oldest = &pendings[i];
    }
    if (!p) {  /* full: the oldest has waited longest for a reply that is not coming */
        settle(oldest, "no reply seen");
        p = oldest;
    }
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->conn_fd = c->fd;
    p->conn_gen = c->gen;
    p->since_ms = now_ms();
    snprintf(p->id, sizeof p->id, "%s", id);
    p->nfds = n;
    for (int k = 0; k < n; k++) {
        p->fds[k] = fds[k];
        p->ids[k] = bpf_id(fds[k]);
    }
    __atomic_add_fetch(&npending, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&lock);
}

/* QEMU maps a map it was given: the device took its fds (src: ebpf_rss_load_fds). */
static void mapped(int fd)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_PENDING; i++)
        for (int k = 0; pendings[i].used && k < pendings[i].nfds; k++)
            if (pendings[i].fds[k] == fd)
                pendings[i].taken = 1;
    pthread_mutex_unlock(&lock);
}

WRAPPED void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!real_mmap)  /* another library's constructor maps before ours ran */
        real_mmap = dlsym(RTLD_NEXT, "mmap");
    if (fd >= 0 && (flags & MAP_SHARED) && __atomic_load_n(&npending, __ATOMIC_SEQ_CST) > 0)
        mapped(fd);
    return real_mmap(addr, len, prot, flags, fd, off);
}

WRAPPED void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!real_mmap64 && !real_mmap)
        real_mmap = dlsym(RTLD_NEXT, "mmap");
    if (fd >= 0 && (flags & MAP_SHARED) && __atomic_load_n(&npending, __ATOMIC_SEQ_CST) > 0)
        mapped(fd);
    return (real_mmap64 ? real_mmap64 : real_mmap)(addr, len, prot, flags, fd, off);
}

/* ---- which fds are libvirt's monitor connections ---- */

/* A racy look for a hint; whoever acts on a slot checks again under the lock. */
static struct conn *find(int fd)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (__atomic_load_n(&conns[i].fd, __ATOMIC_RELAXED) == fd)
            return &conns[i];
    return NULL;
}

/* A connection's entries wait SETTLE_MS for a reply that can no longer come. Lock held. */
static void orphan(const struct conn *c)
{
    for (int i = 0; i < MAX_PENDING; i++)
        if (pendings[i].used && pendings[i].conn_fd == c->fd && pendings[i].conn_gen == c->gen && !pendings[i].orphaned_ms)
            pendings[i].orphaned_ms = now_ms();
}

/* The slot no longer names a connection. Lock held. Only the reader thread frees what it reads
 * (`ins`): a close() on another thread leaves it for watch() to free when the slot is reused. */
static void release_slot(struct conn *c, int reader)
{
    orphan(c);
    if (reader) {
        free(c->ins);
        c->ins = NULL;
    }
    __atomic_store_n(&c->fd, -1, __ATOMIC_RELAXED);
}

static void watch(int fd)
{
    static int connections;
    if (connections++)  /* libvirtd restarted (or another client came after libvirt's) */
        say("libvirt connected to the monitor again (connection %d)", connections);
    pthread_mutex_lock(&lock);
    settle_orphans();
    struct conn *c = find(fd);  /* a number reused after a close we did not see: start afresh */
    if (!c)
        c = find(-1);
    if (!c)  /* more connections than libvirt ever makes: the oldest slot goes */
        c = &conns[0];
    if (c->fd >= 0)
        release_slot(c, 1);
    int gen = c->gen + 1;
    free(c->ins);
    memset(c, 0, sizeof *c);
    c->gen = gen;
    __atomic_store_n(&c->fd, fd, __ATOMIC_RELAXED);
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
        if (c)
            release_slot(c, 0);
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

/* ---- asking the broker ---- */

/* shims/brokercall.c is built into this object with recvmsg and close renamed to these: its
 * socket to the broker never goes through the wrappers above. */
__attribute__((visibility("hidden"))) ssize_t vebpf_next_recvmsg(int fd, struct msghdr *msg, int flags)
{
    return real_recvmsg(fd, msg, flags);
}

__attribute__((visibility("hidden"))) int vebpf_next_close(int fd)
{
    return real_close(fd);
}

static void base64(struct buf *b, const unsigned char *s, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = s[i] << 16 | (i + 1 < n ? s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        char o[4] = {a[v >> 18 & 63], a[v >> 12 & 63], i + 1 < n ? a[v >> 6 & 63] : '=', i + 2 < n ? a[v & 63] : '='};
        buf_add(b, o, 4);
    }
}

/* ---- a connection to the broker made early ----
 * After a line that runs a kind's warmOn command (src/argv/handoff.ts: libvirt's netdev_add
 * before an rss device_add), the shim connects to the broker, which sets the connection up while
 * QEMU runs that command; the device-plan of the next line goes on it. Whoever swaps it out owns
 * it. It goes at the next line the broker is not asked about. */
static const char *const warm_lines[] = VEBPF_WARM_LINES;
#define EARLY_CONNECT_MS 200  /* a broker whose backlog is full is not waited for longer */
static int early_fd = -1;

static int take_early(void)
{
    return __atomic_exchange_n(&early_fd, -1, __ATOMIC_SEQ_CST);
}

static void let_early_go(void)
{
    int fd = take_early();
    if (fd >= 0)
        real_close(fd);
}

/* After a line that runs a warmOn command, a connection to the broker for the line that follows. */
static void connect_early(const char *line, const char *end)
{
    int named = 0;  /* the look every line gets is a search, as may_plan's; a parse only for a line that names one */
    for (size_t i = 0; !named && i < sizeof warm_lines / sizeof warm_lines[0]; i++)
        named = memmem(line, end - line, warm_lines[i], strlen(warm_lines[i])) != NULL;
    if (!named)
        return;
    char *exe = json_string(json_member(json_skip_ws(line, end), end, "execute"), end);
    int warm = 0;
    for (size_t i = 0; exe && i < sizeof warm_lines / sizeof warm_lines[0]; i++)
        warm |= !strcmp(exe, warm_lines[i]);
    free(exe);
    int fd = warm ? broker_connect(EARLY_CONNECT_MS) : -1;
    int none = -1;
    if (fd >= 0 && !__atomic_compare_exchange_n(&early_fd, &none, fd, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        real_close(fd);
}

/* device-plan for one line: 0 with *p filled and the fds it names in fds/nfds, or -1 with a
 * one-line reason (no fd left open). */
static int plan_line(const char *line, size_t len, struct device_plan *p, int *fds, int *nfds, char *why, size_t why_size)
{
    struct buf req = {0};
    buf_str(&req, "{\"v\":1,\"id\":1,\"op\":\"" VEBPF_OP_DEVICE_PLAN "\",\"emulator\":");
    buf_json(&req, emulator);
    buf_str(&req, ",\"line64\":\"");
    base64(&req, (const unsigned char *)line, len);
    buf_str(&req, "\"}\n");
    char *reply;
    int got[VEBPF_MAX_FDS], n;
    enum broker_result r = broker_call_on(take_early(), req.p, req.len, VEBPF_DEVICE_PLAN_TIMEOUT_S, &reply, got, &n, why, why_size);
    free(req.p);
    if (r != BROKER_OK)
        return -1;
    int bad = device_plan_parse(reply, reply + strlen(reply), len, got, n, p);
    free(reply);
    if (bad || n > MAX_FDS) {
        device_plan_free(p);
        snprintf(why, why_size, "broker: a device-plan that does not fit the line (%d fds) (BROKER_PROTOCOL); check `virt-ebpf doctor`", n);
        for (int i = 0; i < n; i++)
            real_close(got[i]);
        return -1;
    }
    memcpy(fds, got, n * sizeof *got);
    *nfds = n;
    return 0;
}

/* ---- the monitor connection: libvirt -> QEMU ---- */

/* Whether a line is a device_add whose arguments set rss on (QEMU's spellings of true). */
static int asks_rss(const char *line, const char *end, const char *args)
{
    char *exe = json_string(json_member(json_skip_ws(line, end), end, "execute"), end);
    int device_add = exe && !strcmp(exe, "device_add");
    free(exe);
    if (!device_add || !args || *args != '{')
        return 0;
    const char *rss = json_member(args, end, "rss");
    if (rss && !strncmp(rss, "true", 4))
        return 1;
    char *v = json_string(rss, end);
    int on = v && (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "y"));
    free(v);
    return on;
}

/* Each kind's QMP command and marker (src/argv/handoff.ts, through the generated header). */
static const char *const plan_lines[][2] = VEBPF_PLAN_LINES;

/* Whether the broker may plan something for this line: it names a kind's command and marker, or,
 * under the host-wide wrapper, it adds a virtio NIC the host policy may give rss. */
static int may_plan(const char *line, size_t len)
{
    for (size_t i = 0; i < sizeof plan_lines / sizeof plan_lines[0]; i++)
        if (memmem(line, len, plan_lines[i][0], strlen(plan_lines[i][0])) && memmem(line, len, plan_lines[i][1], strlen(plan_lines[i][1])))
            return 1;
    return host_wide[0] == '1' && memmem(line, len, "device_add", 10) && memmem(line, len, "virtio-net", 10);
}

/* The splice for one complete line [line, line+len) QEMU is about to read; *c set to hand it out. */
static void decide(struct conn *c, const char *line, size_t len)
{
    const char *end = line + len;
    c->line_left = len;
    if (!may_plan(line, len)) {  /* nothing the broker would plan: not asked */
        let_early_go();
        connect_early(line, end);
        return;
    }
    struct device_plan p;
    int fds[MAX_FDS], nfds = 0;
    char why[4096];
    char *ins = NULL;
    long at = -1;
    if (plan_line(line, len, &p, fds, &nfds, why, sizeof why) == 0) {
        if (p.said)
            say("%s", p.said);
        if (p.at >= 0 && nfds) {
            char id[ID_MAX];
            command_id(json_skip_ws(line, end), end, id);
            remember(c, id, fds, nfds);
        }
        ins = p.insert;
        at = p.at;
        p.insert = NULL;
        device_plan_free(&p);
    } else {
        const char *args = json_member(json_skip_ws(line, end), end, "arguments");
        char *dev = json_string(json_member(args, end, "id"), end);
        int fallback = !strcmp(policy, "fallback");
        if (fallback)
            say("%s; policy is fallback: %s is added without eBPF RSS steering", why, dev ? dev : "the device");
        else
            say("device_add %s refused: %s", dev ? dev : "(no id)", why);
        free(dev);
        /* strict without the broker: the reason where the fd names go, so QEMU fails the
         * device_add with it ("File descriptor named '<reason>' has not been found"). The one
         * look of its own: only a device_add that asks for rss is refused, not every line
         * that mentions it. */
        if (fallback || !asks_rss(line, end, args))
            return;
        struct buf b = {0}, msg = {0};
        size_t cut = strlen(why);
        if (cut > 512) {  /* bounded: 4 copies, each character maybe 6 once escaped */
            cut = 512;
            while (cut && ((unsigned char)why[cut] & 0xc0) == 0x80)
                cut--;  /* not inside a UTF-8 sequence */
        }
        buf_str(&msg, "virt-ebpf: ");
        buf_add(&msg, why, cut);
        buf_str(&b, "\"" VEBPF_RSS_REFUSAL_PROPERTY "\":[");
        for (int i = 0; i < VEBPF_RSS_FDS_PER_CONTEXT; i++) {
            if (i)
                buf_add(&b, ",", 1);
            buf_json(&b, msg.p);
        }
        buf_str(&b, "],");
        free(msg.p);
        ins = b.p;
        at = args + 1 - line;
    }
    if (!ins || at < 0 || (size_t)at >= len) {
        free(ins);
        return;
    }
    c->ins = ins;
    c->ins_len = strlen(ins);
    c->ins_off = 0;
    c->before_ins = at;
    c->after_ins = len - at;
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

/* Peek at the line at the head of the socket; a line still arriving is waited for (bounded, sleeping). */
static ssize_t peek_line(int fd, char **nl)
{
    long deadline = now_ms() + PIECES_WAIT_MS;
    for (int nap = 1;; nap = nap < 32 ? nap * 2 : 32) {
        ssize_t n = recv(fd, peekbuf, PEEK_MAX, MSG_PEEK | MSG_DONTWAIT);
        *nl = n > 0 ? memchr(peekbuf, '\n', n) : NULL;
        if (n <= 0 || *nl || n == PEEK_MAX || now_ms() >= deadline)
            return n;
        struct timespec ts = {0, nap * 1000000L};
        nanosleep(&ts, NULL);
    }
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
    if (c->line_left < 0) {  /* a line not looked at: hand it out up to its end */
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
    char *nl;
    ssize_t n = peek_line(fd, &nl);
    if (n <= 0)
        return real_recvmsg(fd, msg, flags);  /* EOF, nothing yet, or an error: QEMU sees it as it is */
    if (!nl) {  /* longer than we look at, or its end did not come in time: it passes as it is */
        if (memmem(peekbuf, n, "device_add", 10))
            say("a device_add line %s: it reaches QEMU unplanned", n == PEEK_MAX ? "longer than 64 KiB" : "whose end did not arrive within 1 s");
        c->line_left = -1;
        return monitor_recv(c, fd, msg, flags);
    }
    decide(c, peekbuf, nl + 1 - peekbuf);
    return monitor_recv(c, fd, msg, flags);
}

WRAPPED ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    struct conn *c = listen_fd >= 0 ? find(fd) : NULL;
    if (!c)
        return real_recvmsg(fd, msg, flags);
    /* One thread reads a connection (QEMU's monitor thread): its read state needs no lock. */
    ssize_t r = monitor_recv(c, fd, msg, flags);
    int e = errno;
    if (r == 0) {  /* libvirt went away; QEMU accepts the next connection on listen_fd */
        pthread_mutex_lock(&lock);
        if (c->fd == fd)
            release_slot(c, 1);
        pthread_mutex_unlock(&lock);
    }
    errno = e;
    return r;
}

/* ---- QEMU -> libvirt: the replies to device_adds we gave fds to ---- */

/* A reply line of connection c (ctx): the entry of its command is done. Lock held. */
static void replied(void *ctx, const char *id, int error)
{
    const struct conn *c = ctx;
    for (int i = 0; i < MAX_PENDING; i++) {
        struct pending *p = &pendings[i];
        if (!p->used || p->conn_fd != c->fd || p->conn_gen != c->gen || strcmp(p->id, id))
            continue;
        if (error)  /* QEMU did not keep them: close those still ours */
            say("device_add %s failed: closed %d eBPF fds", p->id[0] ? p->id : "(no id)", close_ours(p));
        else if (!p->taken)  /* added without them (a backend that cannot steer): QEMU never uses them */
            say("device_add %s: added without using its eBPF fds; closed %d", p->id[0] ? p->id : "(no id)", close_ours(p));
        forget(p);
        return;
    }
}

WRAPPED ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    ssize_t r = real_sendmsg(fd, msg, flags);
    if (r <= 0 || __atomic_load_n(&npending, __ATOMIC_SEQ_CST) == 0 || listen_fd < 0 || !find(fd))
        return r;
    int e = errno;
    pthread_mutex_lock(&lock);
    struct conn *c = find(fd);
    for (size_t k = 0, left = r; c && k < msg->msg_iovlen && left > 0; k++) {
        size_t n = msg->msg_iov[k].iov_len < left ? msg->msg_iov[k].iov_len : left;
        reply_lines_feed(&c->out, msg->msg_iov[k].iov_base, n, replied, c);
        left -= n;
    }
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}
