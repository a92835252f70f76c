export * from './console';
export * from './cmdline';
export { GuestConsole, type GuestConsoleOptions } from './session';
export { ensureFixture, repoRoot, type GuestFixture, type GuestManifest } from './fixture';
export { createTap, type Tap, type TapOptions } from './tap';
export { bootGuest, fixtureQemuArgs, DEFAULT_MAC, type BootOptions, type BootedGuest, type ExitStatus } from './qemu';
export {
  startLibvirtGuest,
  guestDomainXml,
  parseDomiflist,
  GUEST_IMAGES_DIR,
  LIBVIRT_URI,
  THIS_HOST,
  type LibvirtHost,
  type LibvirtGuest,
  type LibvirtGuestOptions,
  type LibvirtNic,
  type GuestDomainXmlOptions,
  type DomainInterface,
} from './libvirt';
