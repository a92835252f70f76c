/**
 * The guest fixture's own failures (building the guest, booting it, talking to it): a
 * VirtEbpfError with codes of the test fixture's, not the product's (src/errors.ts lists those).
 */
import { VirtEbpfError } from '../../../src/errors';

export type GuestErrorCode = 'GUEST_BUILD' | 'GUEST_BOOT' | 'GUEST_TIMEOUT' | 'GUEST_EXITED' | 'GUEST_COMMAND' | 'GUEST_OUTPUT';

export class GuestError extends VirtEbpfError<GuestErrorCode> {}
