/*
 * Fuzz target: script_field (shims/parse.c) on the text of an installed script (an emulator
 * wrapper's real=, the hook file's node= and hook=), as read_script hands it over: a C string.
 * A value it returns must be the rest of a line that starts with `KEY=`.
 */
#include "fuzz.h"
#include "parse.h"

static const char *const KEYS[] = {"real", "identity", "node", "hook"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    for (size_t i = 0; i < sizeof KEYS / sizeof *KEYS; i++) {
        char why[256] = "";
        char *v = script_field(text, "/fuzz/script", KEYS[i], why, sizeof why);
        if (!v) {
            contract(why[0], "script_field found no %s= line and said nothing", KEYS[i]);
            continue;
        }
        contract(!strchr(v, '\n'), "script_field's %s= value runs over a line", KEYS[i]);
        /* `KEY=VALUE` at the start of the text or of a line, VALUE up to the line's end */
        size_t k = strlen(KEYS[i]), n = strlen(v);
        int found = 0;
        for (const char *line = text; line && !found; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
            found = !strncmp(line, KEYS[i], k) && line[k] == '=' && !strncmp(line + k + 1, v, n) && (line[k + 1 + n] == '\n' || !line[k + 1 + n]);
        contract(found, "script_field's %s= value is not the rest of such a line", KEYS[i]);
        free(v);
    }
    free(text);
    return 0;
}
