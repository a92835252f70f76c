/*
 * Fuzz target: the pure parts of the hot-plug shim (shims/splice.c). The input's first four
 * bytes set the line length a device-plan reply is read against (2 bytes), how many fds came
 * with it, and the size of the pieces QEMU's writes are fed in; the rest is the reply, and also
 * the bytes QEMU writes. A plan that is accepted must splice inside the line, within SPLICE_MAX,
 * with every fd mark replaced; the replies found in the written bytes must be the same whether
 * they come in one write or in pieces.
 */
#include "fuzz.h"
#include "json.h"
#include "splice.h"

#define MAX_SEEN 64

struct seen {
    int n;
    char ids[MAX_SEEN][ID_MAX];
    int errors[MAX_SEEN];
};

static void record(void *ctx, const char *id, int error)
{
    struct seen *s = ctx;
    contract(strlen(id) < ID_MAX, "command_id gave an id of %zu bytes", strlen(id));
    if (s->n < MAX_SEEN) {
        memcpy(s->ids[s->n], id, strlen(id) + 1);
        s->errors[s->n] = error;
    }
    s->n++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    size_t line_len = data[0] | (size_t)data[1] << 8;
    int nfds = data[2] % (SPLICE_MAX_FDS + 2);
    size_t piece = data[3] % 64 + 1;
    size_t n = size - 4;
    char *reply = fuzz_exact(data + 4, n);
    int fds[SPLICE_MAX_FDS + 2];
    for (int i = 0; i < SPLICE_MAX_FDS + 2; i++)
        fds[i] = 30 + i;

    struct device_plan p;
    if (device_plan_parse(reply, reply + n, line_len, fds, nfds, &p) == 0) {
        contract(p.at >= 0 || !p.insert, "a plan that passes the line has a splice");
        contract(p.at < 0 || (p.insert && p.at >= 1 && (size_t)p.at < line_len), "a splice at %ld outside a line of %zu bytes", p.at, line_len);
        contract(!p.insert || (strlen(p.insert) <= SPLICE_MAX && !strstr(p.insert, "@virt-ebpf-fd:")), "a splice over SPLICE_MAX or with an fd mark left");
        device_plan_free(&p);
    } else {
        contract(!p.insert && !p.said && p.at == -1, "a refused plan left something behind");
    }

    struct reply_lines whole = {0}, pieces = {0};
    struct seen a = {0}, b = {0};
    reply_lines_feed(&whole, reply, n, record, &a);
    for (size_t off = 0; off < n; off += piece)
        reply_lines_feed(&pieces, reply + off, n - off < piece ? n - off : piece, record, &b);
    contract(a.n == b.n, "%d replies in one write, %d in pieces of %zu", a.n, b.n, piece);
    for (int i = 0; i < a.n && i < MAX_SEEN; i++)
        contract(!strcmp(a.ids[i], b.ids[i]) && a.errors[i] == b.errors[i], "reply %d differs in pieces of %zu", i, piece);
    free(reply);
    return 0;
}
