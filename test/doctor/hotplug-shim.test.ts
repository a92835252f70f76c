/** The pure halves of src/doctor/hotplug-shim.ts: which QEMU should have the hot-plug shim, and does it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hasLibvirtMonitor, mapsShowShim, stateWantsHotplug } from '../../src/doctor/hotplug-shim';

test('the shim is seen in /proc/PID/maps by its file name only', () => {
  const lib = '7f1c2a000000-7f1c2a001000 r--p 00000000 fe:01 1234    /usr/lib/virt-ebpf/dist/shims/vebpf-qmp.so';
  assert.equal(mapsShowShim(`55d0-55d1 r-xp 0 fe:01 1 /usr/bin/qemu-system-x86_64\n${lib}\n`), true);
  assert.equal(mapsShowShim('55d0-55d1 r-xp 0 fe:01 1 /usr/bin/qemu-system-x86_64\n7f-7f r--p 0 fe:01 9 /tmp/vebpf-qmp.so.bak\n'), false);
  assert.equal(mapsShowShim(''), false);
});

test('libvirt\'s monitor is the charmonitor socket chardev, whichever form', () => {
  assert.equal(hasLibvirtMonitor(['-chardev', 'socket,id=charmonitor,fd=31,server=on,wait=off']), true);
  assert.equal(hasLibvirtMonitor(['--chardev', 'socket,id=charmonitor,path=/run/m.sock,server=on,wait=off']), true);
  assert.equal(hasLibvirtMonitor(['-chardev', 'socket,id=charchannel0,fd=32,server=on,wait=off']), false);
  assert.equal(hasLibvirtMonitor(['-name', 'socket,id=charmonitor']), false, 'only as the value of -chardev');
});

test('hot-plug is on unless the hook recorded hotplug: false; unreadable state is not ours', () => {
  assert.equal(stateWantsHotplug('{"name":"vm","policy":"strict","hotplug":true}'), true);
  assert.equal(stateWantsHotplug('{"name":"vm","policy":"strict"}'), true, 'a state from before hotplug existed');
  assert.equal(stateWantsHotplug('{"name":"vm","hotplug":false}'), false);
  assert.equal(stateWantsHotplug('{broken'), false);
});
