/** The pure halves of src/wrapper/interposer.ts: recognising an interposed QEMU and its helpers. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hasInterposedMonitor, servedQemuPid } from '../../src/wrapper/interposer';

test('an interposed monitor is a connected socket fd; libvirt\'s own listening socket is not', () => {
  assert.equal(hasInterposedMonitor(['-chardev', 'socket,fd=12,id=charmonitor', '-mon', 'chardev=charmonitor,id=monitor,mode=control']), true);
  assert.equal(hasInterposedMonitor(['-chardev', 'socket,id=charmonitor,fd=31,server=on,wait=off']), false, 'libvirt as it starts QEMU');
  assert.equal(hasInterposedMonitor(['-chardev', 'socket,id=charmonitor,path=/run/x.sock,server=on,wait=off']), false);
  assert.equal(hasInterposedMonitor(['-chardev', 'socket,fd=12,id=charconsole0']), false, 'another chardev');
  assert.equal(hasInterposedMonitor(['-chardev']), false);
});

test('the QEMU pid an interposer serves comes from its command line, whatever python it runs under', () => {
  assert.equal(servedQemuPid(['/usr/bin/python3', '-I', '-S', '/usr/lib/virt-ebpf/shims/interposer.py', '30', '5', '6', '4242', '/usr/bin/qemu-system-x86_64', 'strict', 'vm', '']), 4242);
  assert.equal(servedQemuPid(['/usr/bin/python3', '/usr/lib/virt-ebpf/shims/interposer.py', '30', '5', '6', 'x']), undefined);
  assert.equal(servedQemuPid(['/usr/bin/python3', '/usr/lib/virt-ebpf/shims/wrapper.py', '1', '2', '3', '4']), undefined);
});
