/*
 * bpf_object__load at a given nice value, for the broker's loads (src/bpf/libbpf.ts calls it
 * through koffi on a thread of libuv's pool, off the main thread). A load is ~30-50 ms of
 * verifier time: a pool refill runs at nice 19 so it does not compete with the QEMUs of
 * starting domains, a load a start waits for at the nice it was given. The nice value is a
 * thread's own on Linux: it is set on the calling thread for the load and put back after, so the
 * pool thread's next work runs as before. libbpf is the instance the process already loaded
 * (`soname`, by dlopen RTLD_NOLOAD): this loads nothing new.
 *
 * Returns libbpf's result (0 or -errno). `*status` says what else happened: VEBPF_NO_LIBBPF
 * (libbpf is not loaded in this process or has no bpf_object__load: nothing was done) and
 * VEBPF_NICE_STUCK (the thread's nice could not be set or put back: without CAP_SYS_NICE, raising
 * it needs RLIMIT_NICE).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/resource.h>

enum { VEBPF_NO_LIBBPF = 1, VEBPF_NICE_STUCK = 2 };

__attribute__((visibility("default"))) int vebpf_load_niced(const char *soname, void *obj, int nice, int *status) {
  *status = 0;
  void *lib = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
  if (!lib) {
    *status = VEBPF_NO_LIBBPF;
    return -ENOENT;
  }
  int (*load)(void *) = (int (*)(void *))dlsym(lib, "bpf_object__load");
  if (!load) {
    dlclose(lib);
    *status = VEBPF_NO_LIBBPF;
    return -ENOENT;
  }
  errno = 0;
  int before = getpriority(PRIO_PROCESS, 0);
  int change = errno == 0 && before != nice;
  if (change && setpriority(PRIO_PROCESS, 0, nice) != 0) {
    change = 0;
    *status |= VEBPF_NICE_STUCK; /* this thread was left at a nice it cannot leave */
  }
  int rc = load(obj);
  int saved = errno;
  if (change && setpriority(PRIO_PROCESS, 0, before) != 0) *status |= VEBPF_NICE_STUCK;
  dlclose(lib);
  errno = saved;
  return rc;
}
