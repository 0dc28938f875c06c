#!/usr/bin/env bash
# Builds the four images of the compose fleet FROM scratch, from what is on this machine: no
# registry is needed, and none is pulled from (where no registry is reachable, `FROM debian`
# fails; compose/Dockerfile needs one for its rust and debian bases).
#
#   compose/build-images.sh                                 # cargo build --release, then the images
#   compose/build-images.sh --binary target/debug/outpost   # an outpost binary already built
#
# Images, named by the variables compose/docker-compose.yml reads:
#   ${OUTPOST_IMAGE:-outpost:local}              the outpost binary (debug info stripped), the
#                                                shared libraries it links (from ldd) and the
#                                                loader, the CA bundle, user outpost (10001),
#                                                /var/lib/outpost/{control-plane,backup,spool,tokens}
#                                                owned by it with mode 0700
#   ${OUTPOST_REDIS_IMAGE:-outpost-redis:local}  Debian's redis-server and redis-cli with their
#                                                libraries, user redis (999)
#   ${OUTPOST_NGINX_IMAGE:-outpost-nginx:local}  Debian's nginx with its libraries and
#                                                compose/images/nginx.conf, user nginx (101)
#   ${OUTPOST_POSTGRES_IMAGE:-outpost-postgres:local}
#                                                Debian's PostgreSQL (the newest
#                                                /usr/lib/postgresql/N: programs, modules
#                                                without JIT, share files), time zone data,
#                                                their libraries, dash (also /bin/sh) and
#                                                compose/images/postgres-entrypoint.sh (initdb
#                                                at the first start), user postgres (999). No
#                                                password is built in: the fleet passes one.
# Then start the fleet with the non-default names exported (compose/README.md):
#   export OUTPOST_REDIS_IMAGE=outpost-redis:local OUTPOST_NGINX_IMAGE=outpost-nginx:local
#   export OUTPOST_POSTGRES_IMAGE=outpost-postgres:local
#
# Needs docker (the legacy builder is enough), ldd, strip (binutils) and Debian's redis-server,
# redis-tools, nginx-light (or nginx), postgresql and tzdata packages. The build contexts are put together under
# ${OUTPOST_IMAGES_DIR:-target/compose-images}. A second run with nothing changed builds
# nothing: each image is labelled with a hash of its context and rebuilt only when that hash
# changes, and the binary is stripped again only when it changed. The image a rebuild replaces
# is removed unless a container still uses it.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

outpost_image="${OUTPOST_IMAGE:-outpost:local}"
redis_image="${OUTPOST_REDIS_IMAGE:-outpost-redis:local}"
nginx_image="${OUTPOST_NGINX_IMAGE:-outpost-nginx:local}"
postgres_image="${OUTPOST_POSTGRES_IMAGE:-outpost-postgres:local}"
stage="${OUTPOST_IMAGES_DIR:-target/compose-images}"

fail() { echo "build-images.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 not found: $2"; }
need docker "install Docker"
need ldd "install libc-bin"
need strip "install binutils"
for prog in /usr/bin/redis-server /usr/bin/redis-cli; do
  [ -x "$prog" ] || fail "$prog not found: apt-get install redis-server redis-tools"
done
[ -x /usr/sbin/nginx ] || fail "/usr/sbin/nginx not found: apt-get install nginx-light"
pg_dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
pg_dir="${pg_dir%/bin}"
[ -n "$pg_dir" ] && [ -x "$pg_dir/bin/initdb" ] ||
  fail "no /usr/lib/postgresql/N/bin/initdb: apt-get install postgresql"
pg_version="${pg_dir##*/}"
[ -d "/usr/share/postgresql/$pg_version" ] ||
  fail "/usr/share/postgresql/$pg_version not found: apt-get install postgresql-$pg_version"
[ -d /usr/share/zoneinfo ] || fail "/usr/share/zoneinfo not found: apt-get install tzdata"

if [ -z "$binary" ]; then
  cargo build --release --locked --bin outpost
  binary=target/release/outpost
fi
[ -x "$binary" ] || fail "$binary is not an executable (build it first, or leave out --binary)"

# Copies every shared library the programs link (as ldd resolves them on this machine, the
# loader included) to the same path under $1.
copy_libs() {
  local root="$1"; shift
  local prog lib
  for prog in "$@"; do
    if ldd "$prog" | grep -q 'not found'; then
      fail "$prog links a library that is not installed: $(ldd "$prog" | grep 'not found')"
    fi
    for lib in $(ldd "$prog" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}

# The programs themselves (symbolic links followed) at the same path under $1, and their
# libraries.
copy_with_libs() {
  local root="$1"; shift
  local prog
  for prog in "$@"; do
    mkdir -p "$root$(dirname "$prog")"
    cp -L "$prog" "$root$prog"
  done
  copy_libs "$root" "$@"
}

# The files every image has: passwd and group with root and the runtime user ($2:$3, uid and
# gid $4), name lookups from files then DNS (Docker's resolver), and a world-writable /tmp.
base_files() {
  local root="$1" user="$2" home="$3" id="$4"
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n%s:x:%s:%s:%s:%s:/usr/sbin/nologin\n' \
    "$user" "$id" "$id" "$user" "$home" > "$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$id" > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
}

# A fresh context directory $stage/$1 with the Dockerfile compose/images/$1.Dockerfile.
context() {
  local ctx="$stage/$1"
  rm -rf "$ctx/base" "$ctx/state" "$ctx/data" "$ctx/cache" "$ctx/config" "$ctx/run"
  mkdir -p "$ctx/base"
  cp "compose/images/$1.Dockerfile" "$ctx/Dockerfile"
  echo "$ctx"
}

# Builds $2 from context $1 unless an image of that name already has the same content hash.
build() {
  local ctx="$1" tag="$2" hash current old new
  hash="$(cd "$ctx" && { find . -printf '%p %m %l\n' | LC_ALL=C sort
                          find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } |
          sha256sum | cut -c1-32)"
  current="$(docker image inspect -f '{{ index .Config.Labels "org.outpost.content" }}' "$tag" 2>/dev/null || true)"
  if [ "$current" = "$hash" ]; then
    echo "$tag: up to date"
    return
  fi
  old="$(docker image inspect -f '{{ .Id }}' "$tag" 2>/dev/null || true)"
  # Quiet unless it fails (the legacy builder also warns that it is deprecated, every time).
  if ! docker build --quiet --label "org.outpost.content=$hash" --tag "$tag" "$ctx" \
      >"$stage/build.log" 2>&1; then
    cat "$stage/build.log" >&2
    fail "docker build of $tag failed"
  fi
  new="$(docker image inspect -f '{{ .Id }}' "$tag")"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  echo "$tag: built ($(docker image inspect -f '{{ .Size }}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

mkdir -p "$stage"

# ---------------------------------------------------------------------------------- outpost
ctx="$(context outpost)"
base_files "$ctx/base" outpost /var/lib/outpost 10001
mkdir -p "$ctx/base/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/base/etc/ssl/certs/" ||
  fail "no CA bundle at /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"
# The binary itself goes in a layer of its own (below).
copy_libs "$ctx/base" "$binary"
mkdir -p "$ctx/state"/{control-plane,backup,spool,tokens}
chmod 0755 "$ctx/state"
chmod 0700 "$ctx/state"/{control-plane,backup,spool,tokens}
mkdir -p "$ctx/config"
cp config/*.toml "$ctx/config/"
# Debug info is most of a debug build's size and no use in a container: stripped, once per
# binary (its size, time and inode say whether it changed since).
source_id="$(realpath "$binary") $(stat -c '%s %Y %i' "$binary")"
if [ ! -f "$ctx/outpost" ] || [ "$(cat "$stage/outpost.source" 2>/dev/null)" != "$source_id" ]; then
  strip --strip-debug -o "$ctx/outpost" "$binary"
  echo "$source_id" > "$stage/outpost.source"
fi
build "$ctx" "$outpost_image"

# ---------------------------------------------------------------------------------- redis
ctx="$(context redis)"
base_files "$ctx/base" redis /data 999
copy_with_libs "$ctx/base" /usr/bin/redis-server /usr/bin/redis-cli
mkdir -p "$ctx/data"
chmod 0700 "$ctx/data"
build "$ctx" "$redis_image"

# ---------------------------------------------------------------------------------- nginx
ctx="$(context nginx)"
base_files "$ctx/base" nginx /var/cache/nginx 101
copy_with_libs "$ctx/base" /usr/sbin/nginx
mkdir -p "$ctx/base/etc/nginx/conf.d"
cp compose/images/nginx.conf "$ctx/base/etc/nginx/nginx.conf"
mkdir -p "$ctx/cache"
chmod 0755 "$ctx/cache"
build "$ctx" "$nginx_image"

# ---------------------------------------------------------------------------------- postgres
ctx="$(context postgres)"
base_files "$ctx/base" postgres /var/lib/postgresql 999
# Modules are loaded by the server (initdb already needs plpgsql and the snowball
# dictionaries); llvmjit is left out (it links all of LLVM; the server runs with jit off
# without it).
pg_programs=("$pg_dir"/bin/{postgres,initdb,pg_ctl,pg_isready,psql})
pg_modules=()
for module in "$pg_dir"/lib/*.so; do
  case "${module##*/}" in llvmjit*) ;; *) pg_modules+=("$module") ;; esac
done
copy_with_libs "$ctx/base" /bin/dash "${pg_programs[@]}" "${pg_modules[@]}"
# initdb and the server run commands through popen/system, that is /bin/sh: dash.
ln -s dash "$ctx/base/bin/sh"
mkdir -p "$ctx/base/usr/local/bin" "$ctx/base/usr/share/postgresql"
for prog in "${pg_programs[@]}"; do
  ln -s "$prog" "$ctx/base/usr/local/bin/${prog##*/}"
done
cp -a "/usr/share/postgresql/$pg_version" "$ctx/base/usr/share/postgresql/"
rm -rf "$ctx/base/usr/share/postgresql/$pg_version/man"
cp -a /usr/share/zoneinfo "$ctx/base/usr/share/zoneinfo"
install -m 0755 compose/images/postgres-entrypoint.sh "$ctx/postgres-entrypoint.sh"
mkdir -p "$ctx/data/data" "$ctx/run"
chmod 0755 "$ctx/data"
chmod 0700 "$ctx/data/data"
chmod 2775 "$ctx/run"
build "$ctx" "$postgres_image"
