/**
 * Node marks every inherited fd close-on-exec at start-up. Before exec'ing QEMU we
 * set the flag deliberately on every open fd: cleared on exactly stdio, the fds QEMU's argv
 * names and the BPF fds we add; set on everything else (Node's epoll, eventfd, pipes…).
 */
import { readdirSync } from 'node:fs';
import * as libc from '../sys/libc';

export function openFdNumbers(): number[] {
  return readdirSync('/proc/self/fd').map(Number).filter((n) => Number.isInteger(n));
}

/** Returns the kept fds that are actually open (a named but closed fd is QEMU's problem to report). */
export function setInheritance(keep: Iterable<number>): number[] {
  const want = new Set(keep);
  const kept: number[] = [];
  for (const fd of openFdNumbers()) {
    try {
      libc.setCloexec(fd, !want.has(fd));
      if (want.has(fd)) kept.push(fd);
    } catch {
      /* the directory fd used by readdir is already gone */
    }
  }
  return kept.sort((a, b) => a - b);
}
