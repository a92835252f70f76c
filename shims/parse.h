/*
 * The pure parsers of the shims' inputs (shims/parse.c): the text of an installed script, QEMU's
 * command line (the wrapper), the domain XML (the hook). No I/O, no global state: test/fuzz
 * links them without a shim's main().
 */
#ifndef VEBPF_PARSE_H
#define VEBPF_PARSE_H
#include <stddef.h>

/* The value of the `key=` line of a script's text read from path, malloc'd; NULL (why says so)
 * when it has none. */
char *script_field(const char *text, const char *path, const char *key, char *why, size_t why_size);

/* The value after the last `opt` (or `-opt`) of argv, or NULL. */
const char *option(int argc, char **argv, const char *opt);
/* The guest name of the last -name, as QEMU reads `guest=NAME,…` (or `NAME,…`: guest is the
 * implied key; `,,` is a comma inside a value), malloc'd, or NULL. */
char *domain_name(int argc, char **argv);
/* The fd of libvirt's listening monitor socket: `-chardev socket,id=charmonitor,fd=N,server=on,…`
 * (options in any order, read as QEMU reads them), or -1; N must be decimal digits up to INT_MAX. */
int monitor_fd(int argc, char **argv);
/* s with every @virt-ebpf-fd:K@ replaced by the number of fds[K] (K as the broker writes it: decimal,
 * no leading zero, K < nfds; any other text stays): s itself when it has no such mark, else malloc'd. */
char *with_fds(const char *s, const int *fds, int nfds);

/* The text between the first `start` and the next `stop`, malloc'd, or NULL. */
char *between(const char *text, const char *start, const char *stop);
/* Attribute `name` of our `<virt-ebpf:config …>` element (src/xml writes it; the first such start
 * tag outside comments and CDATA; attributes read as XML writes them, either quote, blanks around
 * `=`), if its value is one of `allowed` (no entities), else dflt. */
const char *config_attr(const char *xml, const char *name, const char *const *allowed, const char *dflt);
/* Whether the domain XML has our <virt-ebpf:config> element. */
int has_config(const char *xml);
/* The text of the domain's <uuid>, blanks trimmed, malloc'd, or NULL. */
char *domain_uuid(const char *xml);
#endif
