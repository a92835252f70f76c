/*
 * virt-ebpf emulator wrapper shim: `vebpf-wrapper WRAPPER ARGS...`, as libvirt's QEMU user. The
 * wrapper libvirt runs as the domain's emulator (/usr/libexec/virt-ebpf/qemu-system-x86_64,
 * src/wrapper/script.ts) is a text file whose first line is `#!` and this binary, so the kernel
 * runs us with its path first — no shell; its real= line names the real QEMU. A command line
 * without an rss device or libvirt's monitor (capability probing, -version) goes to the real QEMU
 * as it is. A host-wide wrapper (`host-wide=on`: install --host-wide put it at the packaged
 * emulator's own path) asks the broker for every domain start.
 *
 * It only moves bytes and fds. The broker plans the command line (src/broker/server.ts,
 * `exec-plan`) and hands over the fds; the shim puts the fd numbers it received where the
 * broker wrote placeholders (@virt-ebpf-fd:K@) and execs the real QEMU in this same pid (libvirt
 * watches it). For an enabled domain with hot-plug on it also preloads the hot-plug shim
 * (vebpf-qmp.so, beside this binary) into QEMU. Only when the broker cannot be asked does it
 * decide something itself: the policy (the domain's, from the state the hook left at prepare or
 * the broker at the domain's last exec-plan on a host without the hook, else the global one,
 * else strict).
 */
#define _GNU_SOURCE
#include "parse.h"
#include "vebpf.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What was recorded for this domain (policy, hotplug): by the hook at prepare, or by the broker
 * at an exec-plan of the domain (a host without the hook), or NULL. */
static char *domain_state(int argc, char **argv)
{
    char *path = domain_state_path(option(argc, argv, "-uuid"));
    char *state = path ? read_file(path, 1 << 16) : NULL;
    free(path);
    return state;
}

/* The record is this start's own: the hook's (made at this start's prepare; on a host without
 * the hook, `hookless`, a hook's record is an old one nothing removed), or one the broker made
 * for this very process (`"by":"exec"` with our pid). */
static int state_current(const char *state, int hookless)
{
    const char *end = state ? state + strlen(state) : NULL;
    const char *obj = state ? json_skip_ws(state, end) : NULL;
    if (!obj || obj >= end || *obj != '{')
        return 0;
    char *by = json_string(json_member(obj, end, "by"), end);
    int exec = by && !strcmp(by, "exec");
    free(by);
    long pid = 0;
    if (exec)
        return json_int(json_member(obj, end, "pid"), end, 1, 1L << 30, &pid) && pid == (long)getpid();
    return !hookless;
}

static int hotplug_wanted(const char *state)
{
    if (!state)
        return 1;
    const char *end = state + strlen(state);
    const char *v = json_member(json_skip_ws(state, end), end, "hotplug");
    return !(v && !strncmp(v, "false", 5));
}

/* The path of a file beside this binary (the install keeps them together in PREFIX/dist/shims). */
static char *beside_me(const char *name)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return NULL;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    struct buf b = {0};
    buf_add(&b, self, slash ? (size_t)(slash - self) : 0);
    buf_fmt(&b, "/%s", name);
    return b.p;
}

static void hotplug_env(const char *real, int argc, char **argv, const char *policy, int host_wide)
{
    int lfd = monitor_fd(argc, argv);
    if (lfd < 0)
        return;
    char *so = beside_me(VEBPF_SHIM_SO);
    if (!so || access(so, R_OK)) {
        fprintf(stderr, "virt-ebpf: %s is missing (run `virt-ebpf install` again): hot-plugged NICs get no eBPF fds\n", so ? so : VEBPF_SHIM_SO);
        free(so);
        return;
    }
    char fd[16];
    snprintf(fd, sizeof fd, "%d", lfd);
    setenv("LD_PRELOAD", so, 1);
    setenv("VIRT_EBPF_QMP_LISTEN", fd, 1);
    setenv("VIRT_EBPF_EMULATOR", real, 1);
    /* Only for when the broker cannot be asked at hot-plug time; the broker knows it otherwise. */
    setenv("VIRT_EBPF_POLICY", policy, 1);
    if (host_wide)
        setenv("VIRT_EBPF_HOST_WIDE", "1", 1);
    setenv("VIRT_EBPF_BROKER_SOCKET", broker_socket(), 1);
    free(so);
}

/* A domain start that needs nothing of the broker now but will have the hot-plug shim: one
 * connection (a hello), so the broker binds this process to its domain before QEMU runs guest
 * code (a hot-plug comes from a QEMU the guest may own by then; the broker binds at accept).
 * Bounded by VEBPF_BIND_TIMEOUT_S; whatever the broker answers, the start goes on as asked. */
static void bind_domain(void)
{
    static const char hello[] = "{\"v\":1,\"id\":1,\"op\":\"" VEBPF_OP_HELLO "\"}\n";
    char *reply, why[256];
    int fds[VEBPF_MAX_FDS], nfds = 0;
    if (broker_call(hello, sizeof hello - 1, VEBPF_BIND_TIMEOUT_S, &reply, fds, &nfds, why, sizeof why) == BROKER_OK)
        free(reply);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

/* exec-plan: the argv to run (NULL: run as asked) and its fds; exits under strict when refused.
 * The broker's reply also says the domain's policy and hot-plug setting (*policy, *hotplug).
 * A start that needs no fds (!needed) goes on as asked when the broker cannot be reached. */
static char **exec_plan(const char *real, int argc, char **argv, int needed, const char **policy, int *hotplug, int *fds, int *nfds)
{
    struct buf req = {0};
    buf_str(&req, "{\"v\":1,\"id\":1,\"op\":\"" VEBPF_OP_EXEC_PLAN "\",\"emulator\":");
    buf_json(&req, real);
    buf_str(&req, ",\"argv\":[");
    for (int i = 0; i < argc; i++) {
        if (i)
            buf_add(&req, ",", 1);
        buf_json(&req, argv[i]);
    }
    buf_str(&req, "]}\n");
    char *reply, why[8192];
    enum broker_result r = broker_call(req.p, req.len, VEBPF_EXEC_PLAN_TIMEOUT_S, &reply, fds, nfds, why, sizeof why);
    free(req.p);
    if (r == BROKER_UNREACHABLE && !needed)
        return NULL;
    if (r != BROKER_OK) {
        fprintf(stderr, "virt-ebpf: %s\n", why);
        if (!strcmp(*policy, "strict"))
            exit(1);
        char *name = domain_name(argc, argv);
        fprintf(stderr, "virt-ebpf: policy is fallback: starting %s without eBPF RSS steering\n", name ? name : "the domain");
        free(name);
        return NULL;
    }
    const char *end = reply + strlen(reply);
    const char *obj = json_skip_ws(reply, end);
    char *said = json_string(json_member(obj, end, "policy"), end);
    if (said && (!strcmp(said, "strict") || !strcmp(said, "fallback")))
        *policy = !strcmp(said, "strict") ? "strict" : "fallback";
    free(said);
    const char *hp = json_member(obj, end, "hotplug");
    if (hp && (!strncmp(hp, "true", 4) || !strncmp(hp, "false", 5)))
        *hotplug = *hp == 't';
    const char *list = json_member(obj, end, "argv");
    if (!list || *list != '[') {  /* null: no device to steer (e.g. rss=off) */
        free(reply);
        return NULL;
    }
    char **out = calloc(argc + 1, sizeof *out);
    int n = 0;
    for (const char *v = json_first(list, end); v && n < argc + 1; v = json_next(v, end)) {
        char *s = json_string(v, end);
        if (!s)
            break;
        out[n++] = s;
    }
    free(reply);
    if (n != argc) {  /* the broker never changes the count; anything else is a broken reply */
        fprintf(stderr, "virt-ebpf: broker: an exec-plan of %d arguments for %d (BROKER_PROTOCOL); check `virt-ebpf doctor`\n", n, argc);
        exit(1);
    }
    out[n] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: vebpf-wrapper WRAPPER [ARGS...] (the interpreter of the emulator wrappers `virt-ebpf install` writes)\n");
        return 2;
    }
    char why[8192];
    char *text = read_script(argv[1], why, sizeof why);
    const char *real = text ? script_field(text, argv[1], "real", why, sizeof why) : NULL;
    char ignored[8];
    char *hw = text ? script_field(text, argv[1], "host-wide", ignored, sizeof ignored) : NULL;
    int host_wide = hw && !strcmp(hw, "on");
    free(hw);
    char *hk = text ? script_field(text, argv[1], "hook", ignored, sizeof ignored) : NULL;
    int hookless = hk && !strcmp(hk, "off");
    free(hk);
    free(text);
    if (!real || real[0] != '/') {
        fprintf(stderr, "virt-ebpf: %s\n", real ? "the wrapper's real= is not an absolute path; run `virt-ebpf install` again" : why);
        return 1;
    }
    int n = argc - 2;
    char **args = argv + 2;
    /* What was recorded for the domain: the policy and hot-plug setting when the broker is not
     * asked (no rss device on the command line) or cannot be. */
    char *state = domain_state(n, args);
    /* A domain the hook recorded nothing for, run by the host-wide wrapper, never asked for eBPF:
     * it starts without it rather than not at all. */
    const char *policy = host_wide && !state ? "fallback" : resolve_policy(state);
    int hotplug = hotplug_wanted(state);
    int current = state_current(state, hookless);
    free(state);
    int fds[VEBPF_MAX_FDS], nfds = 0;
    char **plan = NULL;
    /* Fds are needed for a command line with a kind's marker on it ("rss", from
     * src/argv/handoff.ts), and maybe under the host-wide wrapper (the broker applies the host's
     * policy). A domain start (-uuid: libvirt's, not a probe) without a record of its own asks
     * too: the reply carries the domain's policy and hot-plug setting, which on a host without
     * our hook only the broker can read. */
    static const char *const markers[] = VEBPF_ARGV_MARKERS;
    int needed = host_wide;
    for (int i = 0; i < n && !needed; i++)
        for (size_t m = 0; m < sizeof markers / sizeof markers[0] && !needed; m++)
            needed = strstr(args[i], markers[m]) != NULL;
    if (needed || (!current && option(n, args, "-uuid")))
        plan = exec_plan(real, n, args, needed, &policy, &hotplug, fds, &nfds);
    else if (hotplug && option(n, args, "-uuid") && monitor_fd(n, args) >= 0)
        bind_domain();
    if (hotplug)
        hotplug_env(real, n, args, policy, host_wide);
    char **out = calloc(n + 2, sizeof *out);
    out[0] = (char *)real;
    for (int i = 0; i < n; i++)
        out[i + 1] = plan ? with_fds(plan[i], fds, nfds) : args[i];
    for (int i = 0; i < nfds; i++)  /* received close-on-exec; QEMU must inherit them */
        fcntl(fds[i], F_SETFD, 0);
    fflush(stderr);
    execv(real, out);
    fprintf(stderr, "virt-ebpf: cannot run %s: %m\n", real);
    return 127;
}
