/*
 * virt-ebpf libvirt hook shim: `vebpf-hook HOOKFILE NAME OP SUBOP EXTRA`, root, domain XML on
 * stdin. The installed hook (/etc/libvirt/hooks/qemu.d/virt-ebpf, from hooks/qemu.d/virt-ebpf) is a text
 * file whose first line is `#!` and this binary: libvirt runs it at every step of every domain
 * (inside `virsh start`), and the kernel runs us with its path first — no shell.
 *
 * Events other than prepare/release/migrate/restore end here at once. A domain without our
 * metadata is done as soon as its XML is read. For prepare/release the hook's logic runs inside
 * the broker (the `hook` op of src/broker/server.ts, src/hook/main.ts runHook); this only
 * forwards the XML and relays the answer. When the broker cannot be asked it does what runHook
 * would: the domain's policy from our metadata decides (strict refuses the start, fallback lets
 * it go on), and the state the wrapper reads (policy, hotplug) is left at prepare and removed at
 * release. migrate/restore (not on the start path) run Node's hook, named by the hook file's
 * node= and hook= lines, with the XML on its stdin.
 */
#define _GNU_SOURCE
#include "parse.h"
#include "vebpf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_XML (16 << 20)

static const char *const POLICIES[] = {"strict", "fallback", NULL};
static const char *const ON_OFF[] = {"on", "off", NULL};

/* The state file of the domain's <uuid> (domain_state_path), or NULL. */
static char *state_path(const char *xml)
{
    char *uuid = domain_uuid(xml);
    char *path = uuid ? domain_state_path(uuid) : NULL;
    free(uuid);
    return path;
}

static void remember(const char *name, const char *xml, const char *policy)
{
    char *path = state_path(xml);
    if (!path)
        return;
    char *slash = strrchr(path, '/');
    /* After a reboot /run/virt-ebpf may not exist yet (the broker's socket unit makes it):
     * make every missing directory on the way. */
    for (char *p = strchr(path + 1, '/'); p && p <= slash; p = strchr(p + 1, '/')) {
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    char uuid[37];
    snprintf(uuid, sizeof uuid, "%s", slash + 1);
    struct buf b = {0};
    buf_str(&b, "{\"name\":");
    buf_json(&b, name);
    buf_fmt(&b, ",\"uuid\":\"%s\",\"policy\":\"%s\",\"hotplug\":%s}\n", uuid, policy,
            strcmp(config_attr(xml, "hotplug", ON_OFF, "on"), "on") ? "false" : "true");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, b.p, b.len);
        (void)w;
        close(fd);
    }
    free(b.p);
    free(path);
}

static void forget(const char *xml)
{
    char *path = state_path(xml);
    if (path)
        unlink(path);
    free(path);
}

/* migrate/restore of one of our domains: Node's hook (src/hook/main.ts), the XML on its stdin.
 * When Node cannot be run, the XML goes on unchanged (exit 0): a broken hook must not stop a
 * migration or restore; the prepare that follows still applies the domain's policy. */
static int to_node(const char *hookfile, char **args, const struct buf *xml)
{
    char why[8192];
    char *text = read_script(hookfile, why, sizeof why);
    char *node = text ? script_field(text, hookfile, "node", why, sizeof why) : NULL;
    char *hook = node ? script_field(text, hookfile, "hook", why, sizeof why) : NULL;
    free(text);
    if (!hook) {
        fprintf(stderr, "virt-ebpf: %s; the domain XML goes on unchanged\n", why);
        return 0;
    }
    int fd = memfd_create("virt-ebpf-domain-xml", 0);  /* no size limit, unlike a pipe nobody drains */
    for (size_t off = 0; fd >= 0 && off < xml->len;) {
        ssize_t w = write(fd, xml->p + off, xml->len - off);
        if (w <= 0) {
            close(fd);
            fd = -1;
            break;
        }
        off += w;
    }
    if (fd < 0 || lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0) {
        fprintf(stderr, "virt-ebpf: cannot pass the domain XML to %s: %m; it goes on unchanged\n", hook);
        return 0;
    }
    if (fd != 0)
        close(fd);
    char *argv[] = {node, hook, args[0], args[1], args[2], args[3], NULL};
    execv(node, argv);
    fprintf(stderr, "virt-ebpf: cannot run %s: %m; the domain XML goes on unchanged (run `virt-ebpf install` again)\n", node);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: vebpf-hook HOOKFILE NAME OP SUBOP EXTRA < domain.xml (the interpreter of the hook file `virt-ebpf install` writes)\n");
        return 2;
    }
    const char *hookfile = argv[1];
    const char *name = argv[2];
    const char *op = argv[3], *sub = argv[4];
    int prepare = !strcmp(op, "prepare") && !strcmp(sub, "begin");
    int release = !strcmp(op, "release") && !strcmp(sub, "end");
    int node = (!strcmp(op, "migrate") || !strcmp(op, "restore")) && !strcmp(sub, "begin");
    if (!prepare && !release && !node)
        return 0;  /* start, started, stopped, reconnect, attach…: nothing of ours to do */
    struct buf xml = {0};
    char chunk[65536];
    ssize_t n;
    buf_add(&xml, "", 0);
    while ((n = read(0, chunk, sizeof chunk)) > 0 && xml.len <= MAX_XML)
        buf_add(&xml, chunk, n);
    if (!strstr(xml.p, VEBPF_XMLNS))
        return 0;  /* not a domain of ours */
    if (node)
        return to_node(hookfile, argv + 2, &xml);

    struct buf req = {0};
    buf_fmt(&req, "{\"v\":1,\"id\":1,\"op\":\"" VEBPF_OP_HOOK "\",\"event\":\"%s\",\"name\":", prepare ? "prepare" : "release");
    buf_json(&req, name);
    buf_str(&req, ",\"xml\":");
    buf_json(&req, xml.p);
    buf_str(&req, "}\n");
    char *reply, why[8192];
    int fds[VEBPF_MAX_FDS], nfds;
    /* bounded: a hook that hangs would hang libvirt's start */
    enum broker_result r = broker_call(req.p, req.len, VEBPF_HOOK_TIMEOUT_S, &reply, fds, &nfds, why, sizeof why);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (r == BROKER_REFUSED) {  /* the broker answered: it said no */
        fprintf(stderr, "virt-ebpf: %s\n", why);
        return prepare ? 1 : 0;
    }
    if (r == BROKER_UNREACHABLE) {
        if (!prepare) {
            forget(xml.p);
            return 0;  /* the broker drops unclaimed contexts itself when it restarts */
        }
        /* A host-wide opt-out without our config: the domain never asked for eBPF, so it is
         * never refused for want of it. Anything else of ours: its policy, strict by default. */
        const char *policy = !has_config(xml.p) && strstr(xml.p, ":host-wide") ? "fallback" : config_attr(xml.p, "policy", POLICIES, "strict");
        remember(name, xml.p, policy);
        if (!strcmp(policy, "fallback")) {
            fprintf(stderr, "virt-ebpf: %s\nvirt-ebpf: policy is fallback: %s starts without eBPF RSS if the wrapper cannot get fds\n", why, name);
            return 0;
        }
        fprintf(stderr, "virt-ebpf: %s\n", why);
        return 1;
    }
    const char *end = reply + strlen(reply);
    const char *obj = json_skip_ws(reply, end);
    char *out = json_string(json_member(obj, end, "stdout"), end);
    char *err = json_string(json_member(obj, end, "stderr"), end);
    long code = 1;  /* a code that is no exit status (0-255) refuses the start, as a missing one does */
    json_int(json_member(obj, end, "code"), end, 0, 255, &code);
    if (out)
        fputs(out, stdout);
    if (err)
        fputs(err, stderr);
    return (int)code;
}
