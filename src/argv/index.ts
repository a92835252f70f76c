export * from './keyval';
export * from './qemu-argv';
export * from './device-add';
export * from './handoff';
export * from './host-policy';
