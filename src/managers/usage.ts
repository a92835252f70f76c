/** The managers' command lines and summaries, shared by the CLI's command table and the entry points (no imports: the CLI loads this at start). */
export const KUBEVIRT_USAGE = 'virt-ebpf kubevirt-sidecar onDefineDomain --vmi JSON --domain XML [--wrapper-dir DIR] [--default-emulator PATH]';
export const VDSM_USAGE = 'virt-ebpf vdsm before_vm_start|before_nic_hotplug [--wrapper-dir DIR] [--default-emulator PATH]';
export const KUBEVIRT_SUMMARY = "KubeVirt hook sidecar: print the VMI's domain XML with eBPF RSS when it asks (annotation virt-ebpf.io/rss)";
export const VDSM_SUMMARY = 'oVirt VDSM hook: edit $_hook_domxml in place for a VM with the custom property virt_ebpf=on';
