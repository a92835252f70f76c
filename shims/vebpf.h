/*
 * What the three start-path shims share (shims/brokercall.c): one request to the broker
 * (src/broker/protocol.ts, version 1) with the fds of its reply, and the files they read; the
 * JSON looks they need are in json.h. The shims are C because they sit on the path of every
 * `virsh start` (each is a process libvirt waits for, or code inside QEMU): they start in about
 * a millisecond.
 */
#ifndef VEBPF_H
#define VEBPF_H
#include <stddef.h>

#include "json.h"
/* Paths, op names and limits, generated from src/shims/constants.ts at build time. */
#include "vebpf-constants.h"

enum broker_result { BROKER_OK = 0, BROKER_REFUSED = 1, BROKER_UNREACHABLE = 2 };
/*
 * Send one request line; on BROKER_OK *reply holds the reply line (malloc'd, NUL-terminated)
 * and fds[0..*nfds) the fds that came with it (close-on-exec). Otherwise why holds the one-line
 * reason in the same words as the TypeScript side and no fd is left open.
 */
enum broker_result broker_call(const char *request, size_t len, int timeout_s, char **reply, int *fds, int *nfds, char *why, size_t why_size);
/*
 * broker_call on a connection made earlier with broker_connect (`early`, which it closes), or on
 * a new one when early is -1. When the broker let the early connection go before it read the
 * request (its idle timeout, a restart), the request goes again on a new connection.
 */
enum broker_result broker_call_on(int early, const char *request, size_t len, int timeout_s, char **reply, int *fds, int *nfds, char *why, size_t why_size);
/* A connection to the broker (close-on-exec), or -1 with errno; connect waits at most timeout_ms. */
int broker_connect(int timeout_ms);
/* $VIRT_EBPF_BROKER_SOCKET or the default. */
const char *broker_socket(void);

/* s with A-Z made a-z, malloc'd. */
char *ascii_lower(const char *s);
/* $VIRT_EBPF_DOMAIN_STATE_DIR (or the default)/<uuid, lower case>.json, malloc'd; NULL unless
 * uuid is 36 characters of hex digits and dashes. The hook writes it, the wrapper reads it. */
char *domain_state_path(const char *uuid);
/* A whole file (NUL-terminated, malloc'd), or NULL: missing, unreadable, or over max bytes. */
char *read_file(const char *path, size_t max);
/*
 * A script `virt-ebpf install` wrote (the hook file, an emulator wrapper: each starts with `#!`
 * and a shim, so the kernel runs that shim with the script's path as its first argument), whole
 * (NUL-terminated, malloc'd); NULL (why says so in one line) when the file cannot be read, is
 * not root's or is writable by others than root, is over 64 KiB or holds a NUL byte (a value cut
 * short there could name another program).
 */
char *read_script(const char *path, char *why, size_t why_size);
/* "strict" or "fallback" from a domain's state JSON (may be NULL), else the global config, else strict. */
const char *resolve_policy(const char *state);
#endif
