/*
 * Fuzz target: the wrapper's command-line parsers (shims/parse.c: option, domain_name,
 * monitor_fd, with_fds) on the argv libvirt gives QEMU and the argv of the broker's exec-plan.
 * Input: one byte (how many fds the broker sent, 0-8), then the arguments separated by NUL
 * bytes, each copied into a C string of its exact size.
 */
#include "fuzz.h"
#include "parse.h"

#define MAX_ARGS 512

/* Whether opt is `fd=N` (leading zeros allowed). */
static int is_fd(const char *opt, int fd)
{
    char text[16];
    snprintf(text, sizeof text, "%d", fd);
    if (strncmp(opt, "fd=", 3))
        return 0;
    const char *d = opt + 3;
    while (d[0] == '0' && d[1])
        d++;
    return !strcmp(d, text);
}

/* Whether arg, read as QEMU reads `key=value,…` (`,,` is a comma inside a value), has fd=N. */
static int written(const char *arg, int fd)
{
    char opt[4096];
    size_t n = 0;
    int over = 0;
    for (const char *p = arg;; p++) {
        if (!*p || (*p == ',' && p[1] != ',')) {
            opt[n] = 0;
            if (!over && is_fd(opt, fd))
                return 1;
            if (!*p)
                return 0;
            n = 0, over = 0;
            continue;
        }
        if (*p == ',')
            p++;
        if (n < sizeof opt - 1)
            opt[n++] = *p;
        else
            over = 1;
    }
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
    char *dom = domain_name(argc, argv);
    contract(!dom == !name, "domain_name and option(-name) disagree");
    contract(!dom || strlen(dom) <= strlen(name), "domain_name is longer than its -name");
    free(dom);
    option(argc, argv, "-uuid");

    int fd = monitor_fd(argc, argv);
    contract(fd >= -1, "monitor_fd returned %d", fd);
    if (fd >= 0) {
        int found = 0;
        for (int i = 0; i < argc && !found; i++)
            found = written(argv[i], fd);
        contract(found, "monitor_fd %d is no fd= option of any argument", fd);
    }

    for (int i = 0; i < argc; i++) {
        char *out = with_fds(argv[i], fds, nfds);
        contract(out != NULL, "with_fds returned NULL");
        if (!strstr(argv[i], "@virt-ebpf-fd:"))
            contract(out == argv[i], "with_fds copied an argument without a placeholder");
        if (out != argv[i])
            free(out);
    }
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return 0;
}
