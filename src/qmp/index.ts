/**
 * QMP, split the way libvirt splits its monitor: transport (socket, framing, fds), protocol
 * (greeting, ids, events), typed commands.
 */
export { QmpTransport, DEFAULT_MAX_LINE_BYTES } from './connection';
export type { TransportOptions, ConnectOptions } from './connection';
export { QmpClient, parseGreeting, commandError, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_GREETING_TIMEOUT_MS } from './protocol';
export type { QmpGreeting, QmpEvent, QmpReply, QmpErrorBody, ClientOptions, ExecuteOptions } from './protocol';
export * from './commands';
