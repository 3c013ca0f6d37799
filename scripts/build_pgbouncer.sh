#!/usr/bin/env bash
# A PgBouncer with protocol-level prepared statements (1.21+) for the test suite, built once
# from Debian 13's (trixie) source package and cached between runs:
#
#   bash scripts/build_pgbouncer.sh        # prints the path of the binary
#
# Debian 12 ships PgBouncer 1.18; trixie's binary package needs a newer libc, but its source
# (1.24.x) builds here with Debian 12's libevent-dev, libssl-dev, libc-ares-dev and pkgconf.
# Only Debian's package archive is used (apt, with a private sources list and state directory:
# the system's apt configuration is left as it is). Build dependencies are installed with
# apt-get when running as root; otherwise they must be there already.
# The cache lives in ${MOUNTAINEER_DB_CACHE:-~/.cache/mountaineer-db}/pgbouncer-1.24; the
# suite finds the binary there (or through MOUNTAINEER_DB_PGBOUNCER_124).
set -euo pipefail

cache=${MOUNTAINEER_DB_CACHE:-$HOME/.cache/mountaineer-db}
prefix=$cache/pgbouncer-1.24
binary=$prefix/bin/pgbouncer
if [ -x "$binary" ] && "$binary" --version 2>/dev/null | grep -q '^PgBouncer 1\.2[1-9]'; then
  echo "$binary"
  exit 0
fi

log() { echo "==> $*" >&2; }

needed=()
for package in build-essential pkgconf libevent-dev libssl-dev libc-ares-dev dpkg-dev; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || needed+=("$package")
done
if [ ${#needed[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing build dependencies: ${needed[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${needed[@]}" >/dev/null
  else
    echo "!! cannot build PgBouncer 1.24: missing ${needed[*]} (apt-get install ${needed[*]})" >&2
    exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian trixie main" > "$work/sources.list"
apt_options=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Get::List-Cleanup=0
  -o APT::Sandbox::User=root
)
log "fetching Debian 13's pgbouncer source package"
apt-get "${apt_options[@]}" update -q >/dev/null
(cd "$work/src" && apt-get "${apt_options[@]}" source -q pgbouncer >/dev/null 2>&1)
source_dir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'pgbouncer-1.*' | head -n 1)
[ -n "$source_dir" ] || { echo "!! the pgbouncer source package did not unpack" >&2; exit 1; }

log "building $(basename "$source_dir") into $prefix"
cd "$source_dir"
./configure -q --prefix="$prefix" --with-cares --without-systemd >/dev/null
make -s -j"${PGBOUNCER_BUILD_JOBS:-1}" >/dev/null 2>&1
rm -rf "$prefix"
make -s install >/dev/null 2>&1
# The suite runs PgBouncer as an unprivileged user when it runs as root.
chmod -R a+rX "$prefix"
"$binary" --version >&2
echo "$binary"
