export { onDefineDomain, readVmi, KUBEVIRT_ANNOTATIONS, HOOK_SIDECARS_ANNOTATION, HOOK_POINT, HOOK_API_VERSION, VIRT_LAUNCHER_EMULATOR } from './kubevirt';
export type { VmiFacts, SidecarOptions } from './kubevirt';
export { beforeVmStart, beforeNicHotplug, readProperties, runVdsmPoint, VDSM_HOOK_POINTS, VDSM_PROPERTIES, VDSM_EMULATOR } from './vdsm';
export type { VdsmHookPoint, VdsmOptions, VdsmSettings } from './vdsm';
export type { ManagerResult } from './common';
export { runKubevirtSidecar, runVdsmHook } from './cli';
export { KUBEVIRT_USAGE, KUBEVIRT_SUMMARY, VDSM_USAGE, VDSM_SUMMARY } from './usage';
