/*
 * Fuzz target: the hook's looks at the domain XML libvirt hands it (shims/parse.c: between,
 * config_attr, domain_uuid), which decide strict/fallback and where the state goes when the
 * broker cannot be asked. Input: the XML, as a C string.
 */
#include "fuzz.h"
#include "parse.h"

static const char *const POLICIES[] = {"strict", "fallback", NULL};
static const char *const ON_OFF[] = {"on", "off", NULL};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *xml = fuzz_cstr(data, size);
    const char *policy = config_attr(xml, "policy", POLICIES, "strict");
    contract(!strcmp(policy, "strict") || !strcmp(policy, "fallback"), "config_attr returned a policy not allowed");
    const char *hotplug = config_attr(xml, "hotplug", ON_OFF, "on");
    contract(!strcmp(hotplug, "on") || !strcmp(hotplug, "off"), "config_attr returned a hotplug not allowed");
    char *uuid = domain_uuid(xml);
    contract(!uuid || !strpbrk(uuid, " \t\r\n"), "domain_uuid kept blanks");
    free(uuid);
    char *b = between(xml, "<name>", "</name>");
    contract(!b || strlen(b) < size, "between gave more than its text");
    free(b);
    free(xml);
    return 0;
}
