/** The managers' command lines, shared by the CLI's command table and the entry points (no imports: the CLI loads this at start). */
export const KUBEVIRT_USAGE = 'virt-ebpf kubevirt-sidecar onDefineDomain --vmi JSON --domain XML [--wrapper-dir DIR] [--default-emulator PATH]';
export const VDSM_USAGE = 'virt-ebpf vdsm before_vm_start|before_nic_hotplug [--wrapper-dir DIR] [--default-emulator PATH]';
