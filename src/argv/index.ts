export * from './keyval';
export * from './qemu-argv';
