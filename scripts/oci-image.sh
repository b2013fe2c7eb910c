#!/usr/bin/env bash
# Packs a root filesystem directory as a single-layer container image archive, without Docker
# or a registry: Debian's umoci builds an OCI layout, Debian's skopeo converts it to a
# docker-archive that both `ctr -n k8s.io images import` and `kind load image-archive` accept.
#
# Usage:
#   scripts/oci-image.sh --rootfs DIR --name REF --out ARCHIVE
#                        [--entrypoint CMD]... [--cmd ARG]... [--user UID:GID]
#                        [--env K=V]... [--workdir D]
#
#   --rootfs DIR      directory that becomes the image's `/` (copied, never modified; owners
#                     and modes are kept, so build it as root for root-owned files)
#   --name REF        image reference written into the archive, with an explicit tag, e.g.
#                     `sensorflow/sensorflow:0.1.0`. containerd normalises it exactly as a pod's
#                     `image:` field: `sensorflow/sensorflow:0.1.0` becomes
#                     `docker.io/sensorflow/sensorflow:0.1.0`, `pause:3.2` becomes
#                     `docker.io/library/pause:3.2`; a registry host (`registry.k8s.io/pause:3.2`)
#                     is kept as given
#   --out ARCHIVE     docker-archive tarball to write (replaced atomically)
#   --entrypoint CMD  one element of the entrypoint array per flag, in order
#   --cmd ARG         one element of the default command array per flag, in order
#   --user UID:GID    user to run as (numeric, so that no /etc/passwd lookup is needed)
#   --env K=V         environment variable; PATH defaults to the usual
#                     /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin unless given
#   --workdir D       working directory
#
# Environment:
#   SOURCE_DATE_EPOCH  timestamp for every file, the layer history and the config's `created`
#                      (default 0 = 1970-01-01): the same rootfs gives the same layer digest
#   SENSORFLOW_CACHE   see scripts/lib.sh (umoci/skopeo are apt-installed when missing)
#   TMPDIR             scratch space: holds a copy of the rootfs and the OCI layout
#
# Prints nothing on stdout; logs go to stderr. Measured (2 cores, busy machine): a static busybox
# rootfs (2 MB) → 0.3 s; the SensorFlow rootfs (79 MB) → 3–12 s; a 775 MB rootfs → 166 s.
# Two runs over the same rootfs give byte-identical archives.
#
# Load the result:
#   ctr -n k8s.io images import ARCHIVE      # containerd (what the kubelet uses)
#   kind load image-archive ARCHIVE          # kind
#   docker load -i ARCHIVE                   # Docker
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '/^# Usage:/,/^#   --workdir/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

rootfs="" name="" out="" user="" workdir=""
entrypoint=() cmd=() env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rootfs) rootfs="${2:?--rootfs needs a value}"; shift 2 ;;
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --entrypoint) entrypoint+=("${2?--entrypoint needs a value}"); shift 2 ;;
    --cmd) cmd+=("${2?--cmd needs a value}"); shift 2 ;;
    --user) user="${2:?--user needs a value}"; shift 2 ;;
    --env) env+=("${2:?--env needs a value}"); shift 2 ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
{ [ -n "$rootfs" ] && [ -n "$name" ] && [ -n "$out" ]; } || usage
[ -d "$rootfs" ] || die "--rootfs $rootfs is not a directory"
# A reference with an explicit tag and no digest: the last path component carries `:tag`.
[[ "$name" != *@* ]] || die "--name $name: digests are not supported, give name:tag"
[[ "${name##*/}" == *:* ]] || die "--name $name has no tag (name:tag)"
[[ "$name" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9_.-])?$ ]] || die "--name $name is not a valid image reference"
[ -z "$user" ] || [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--user $user: use numeric UID[:GID]"
for kv in ${env[@]+"${env[@]}"}; do [[ "$kv" == [A-Za-z_]*=* ]] || die "--env $kv: use K=V"; done

apt_install umoci skopeo

epoch="${SOURCE_DATE_EPOCH:-0}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
tag=image  # tag inside the private OCI layout; the archive carries --name
start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/oci-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootless=()
[ "$(id -u)" -eq 0 ] || rootless=(--rootless)

# An empty image, unpacked into a bundle, filled with a copy of the rootfs and repacked: umoci
# records every file as one new layer. Copying lets us normalise timestamps without touching DIR.
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci unpack ${rootless[@]+"${rootless[@]}"} --image "$work/oci:$tag" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
find "$work/bundle/rootfs" -exec touch -h -d "@$epoch" {} +
umoci repack --image "$work/oci:$tag" --history.created "$created" \
  --history.created_by "scripts/oci-image.sh" "$work/bundle"

config=(--created "$created" --author "" --os linux --architecture "$(dpkg --print-architecture)")
have_path=0
for kv in ${env[@]+"${env[@]}"}; do
  config+=(--config.env "$kv")
  [[ "$kv" == PATH=* ]] && have_path=1
done
[ "$have_path" -eq 1 ] || config+=(--config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for a in ${entrypoint[@]+"${entrypoint[@]}"}; do config+=(--config.entrypoint "$a"); done
for a in ${cmd[@]+"${cmd[@]}"}; do config+=(--config.cmd "$a"); done
[ -z "$user" ] || config+=(--config.user "$user")
[ -z "$workdir" ] || config+=(--config.workingdir "$workdir")
umoci config --no-history --image "$work/oci:$tag" "${config[@]}"
umoci gc --layout "$work/oci"

# docker-archive writes `name:tag` as given into manifest.json's RepoTags; importers apply the
# same docker.io/library normalisation as the kubelet does for `image:`. skopeo refuses to add
# to an existing archive, so write beside the target and rename.
mkdir -p "$(dirname "$out")"
tmp_out="$(dirname "$out")/.$(basename "$out").tmp.$$"
rm -f "$tmp_out"
skopeo --insecure-policy copy --quiet "oci:$work/oci:$tag" "docker-archive:$tmp_out:$name" >&2
mv -f "$tmp_out" "$out"
log "packed $rootfs as $name into $out ($(du -h "$out" | cut -f1), $((SECONDS - start)) s)"
