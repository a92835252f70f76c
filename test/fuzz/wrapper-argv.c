/*
 * Fuzz target: the wrapper's command-line parsers (shims/parse.c: option, domain_name,
 * monitor_fd, with_fds) on the argv libvirt gives QEMU and the argv of the broker's exec-plan.
 * Input: one byte (how many fds the broker sent, 0-8), then the arguments separated by NUL
 * bytes, each copied into a C string of its exact size.
 */
#include "fuzz.h"
#include "parse.h"

#define MAX_ARGS 512

/* Calls f on each option of arg, read as QEMU reads `key=value,…` (`,,` is a comma inside a
 * value), until it returns non-zero; returns that. */
static int each_opt(const char *arg, int (*f)(const char *opt, int index, void *ctx), void *ctx)
{
    char *opt = malloc(strlen(arg) + 1);
    size_t n = 0;
    int index = 0, r = 0;
    for (const char *p = arg; !r; p++) {
        if (!*p || (*p == ',' && p[1] != ',')) {
            opt[n] = 0;
            r = f(opt, index++, ctx);
            if (!*p)
                break;
            n = 0;
            continue;
        }
        if (*p == ',')
            p++;
        opt[n++] = *p;
    }
    free(opt);
    return r;
}

/* Whether opt is `fd=N` (leading zeros allowed) for N = *(int *)ctx. */
static int is_fd(const char *opt, int index, void *ctx)
{
    char text[16];
    snprintf(text, sizeof text, "%d", *(int *)ctx);
    (void)index;
    if (strncmp(opt, "fd=", 3))
        return 0;
    const char *d = opt + 3;
    while (d[0] == '0' && d[1])
        d++;
    return !strcmp(d, text);
}

/* Keeps in *(char **)ctx the guest name the option gives, if any. */
static int guest(const char *opt, int index, void *ctx)
{
    char **name = ctx;
    const char *v = !strncmp(opt, "guest=", 6) ? opt + 6 : !index && !strchr(opt, '=') ? opt : NULL;
    if (v) {
        free(*name);
        *name = strdup(v);
    }
    return 0;
}

/* with_fds as the broker's placeholders say: @virt-ebpf-fd:K@ for each K < nfds, written by the
 * same snprintf as src/broker/protocol.ts writes it, is the number of fds[K]; all else stays. */
static char *placed(const char *s, const int *fds, int nfds)
{
    char *out = malloc(strlen(s) + 1), *o = out;  /* a mark (16 bytes or more) becomes 3 digits */
    while (*s) {
        int k = 0;
        for (char mark[32]; k < nfds; k++) {
            snprintf(mark, sizeof mark, "@virt-ebpf-fd:%d@", k);
            if (!strncmp(s, mark, strlen(mark))) {
                o += sprintf(o, "%d", fds[k]);
                s += strlen(mark);
                break;
            }
        }
        if (k == nfds)
            *o++ = *s++;
    }
    *o = 0;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int nfds = data[0] % 9, fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = 100 + i;
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (size_t at = 1; at < size && argc < MAX_ARGS;) {
        const uint8_t *nul = memchr(data + at, 0, size - at);
        size_t n = nul ? (size_t)(nul - (data + at)) : size - at;
        argv[argc++] = fuzz_cstr(data + at, n);
        at += n + 1;
    }
    argv[argc] = NULL;

    const char *name = option(argc, argv, "-name");
    int named = 0;
    for (int i = 1; i < argc; i++)
        named |= name == argv[i] && (!strcmp(argv[i - 1], "-name") || !strcmp(argv[i - 1], "--name"));
    contract(!name || named, "option(-name) is not an argument after -name");
    char *dom = domain_name(argc, argv), *want = NULL;
    if (name)
        each_opt(name, guest, &want);
    contract(!dom == !want && (!dom || !strcmp(dom, want)), "domain_name gave %s for -name %s", dom ? dom : "NULL", name ? name : "(none)");
    free(want);
    free(dom);
    option(argc, argv, "-uuid");

    int fd = monitor_fd(argc, argv);
    contract(fd >= -1, "monitor_fd returned %d", fd);
    if (fd >= 0) {
        int found = 0;
        for (int i = 0; i < argc && !found; i++)
            found = each_opt(argv[i], is_fd, &fd);
        contract(found, "monitor_fd %d is no fd= option of any argument", fd);
    }

    for (int i = 0; i < argc; i++) {
        char *out = with_fds(argv[i], fds, nfds);
        contract(out != NULL, "with_fds returned NULL");
        if (!strstr(argv[i], "@virt-ebpf-fd:"))
            contract(out == argv[i], "with_fds copied an argument without a placeholder");
        char *want = placed(argv[i], fds, nfds);
        contract(!strcmp(out, want), "with_fds gave %s for %s, not %s", out, argv[i], want);
        free(want);
        if (out != argv[i])
            free(out);
    }
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return 0;
}
