# Helpers for scripts that work with this machine's Debian apt sources (sourced by
# scripts/setup.sh and scripts/matrix/). Nothing here names an archive host: every URI comes
# from the sources the machine already has.

# debian_source SUITE: prints "URI<TAB>SIGNED_BY" of the first enabled `deb` source for SUITE,
# in deb822 form (/etc/apt/sources.list.d/*.sources) or one-line form (sources.list, *.list);
# SIGNED_BY is empty when the source names no keyring file. Prints nothing when none.
debian_source() {
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"; signed = ""
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/ || line ~ /^[ \t]/) continue
          k = tolower(line); sub(/:.*/, "", k)
          v = line; sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
          if (k == "types") types = v
          else if (k == "uris") uris = v
          else if (k == "suites") suites = v
          else if (k == "enabled") enabled = tolower(v)
          else if (k == "signed-by") signed = v
        }
        if (enabled == "no" || (" " types " ") !~ / deb / || (" " suites " ") !~ (" " suite " ")) next
        split(uris, u, /[ \t]+/)
        if (signed !~ /^\//) signed = ""
        print u[1] "\t" signed
        exit
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2; opts = ""
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
        if ($(i + 1) != suite) next
        signed = ""
        if (match(opts, /signed-by=[^] ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
        print $i "\t" signed
        exit
      }' "$f"
  done
}

# debian_uri SUITE: the URI alone (first match), or nothing.
debian_uri() {
  debian_source "$1" | head -n1 | cut -f1
}

# add_debian_suite SUITE FILE: writes a deb822 source for SUITE (main) to FILE, on the same
# archive and keyring as the machine's source for the release SUITE belongs to (the part before
# the first "-", e.g. trixie for trixie-backports). Returns 1 when there is no such source.
add_debian_suite() {
  local suite=$1 file=$2 line uri signed
  line=$(debian_source "${suite%%-*}" | head -n1)
  [ -n "$line" ] || return 1
  uri=${line%%$'\t'*}
  signed=${line#*$'\t'}
  [ -n "$signed" ] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
  cat > "$file" <<SRC
Types: deb
URIs: $uri
Suites: $suite
Components: main
Signed-By: $signed
SRC
}

# close_fds: close every fd above 2 of the current (sub)shell. For daemons started from here:
# one started with an inherited lock fd (flock(1) passes its own) would hold that lock for life.
close_fds() {
  local fd
  for fd in $(ls "/proc/$BASHPID/fd"); do
    [ "$fd" -gt 2 ] && eval "exec $fd>&-"
  done
  return 0
}
