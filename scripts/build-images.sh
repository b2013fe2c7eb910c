#!/usr/bin/env bash
# Builds the SensorFlow image `sensorflow/sensorflow:<tag>` without Docker: release binaries from
# cargo, a minimal root filesystem assembled from them, packed by scripts/oci-image.sh into a
# docker-archive for `ctr -n k8s.io images import` or `kind load image-archive`. Same layout as
# the Dockerfile (see docs/images.md).
#
# Usage:
#   scripts/build-images.sh [--out DIR] [--tag TAG]
#
#   --out DIR   where the archive goes (default $SENSORFLOW_CACHE/images)
#   --tag TAG   image tag (default: the workspace version in Cargo.toml, e.g. 0.1.0)
#
# Prints the archive path (DIR/sensorflow-TAG.tar) on stdout; logs and timings go to stderr.
# cargo always runs (a no-op when nothing changed); the rootfs is repacked only when a binary
# is newer than the archive (or this script or oci-image.sh changed).
#
# Image layout (user 65532:65532, entrypoint /usr/local/bin/sensorflow-operator, PATH and
# SSL_CERT_FILE set):
#   /usr/local/bin/{sensorflow-operator,window-processor,join-predict,gcs-sink,replay,sensorflow}
#                                  (debug info stripped, symbols kept)
#   /lib/..., /lib64/ld-linux-*    exactly the shared libraries `ldd` lists, and the loader
#   /etc/passwd, /etc/group        root and nonroot (65532, home /home/nonroot)
#   /etc/nsswitch.conf             hosts: files dns
#   /etc/ssl/certs/ca-certificates.crt   Debian's CA bundle (gcs-sink talks HTTPS to Google)
#   /tmp (1777), /home/nonroot
# Before packing, every binary's `--help` runs inside the rootfs as 65532:65532
# (`chroot --userspec`, empty environment), and after packing `skopeo inspect` checks the
# archive's name, user and entrypoint.
#
# Environment:
#   CARGO_TARGET_DIR   cargo's target directory (default <repo>/target)
#   SOURCE_DATE_EPOCH  image `created` and file times (default: the last commit's time)
#   SENSORFLOW_CACHE   see scripts/lib.sh
#
# Measured on the 2-core development machine, busy with other builds (details in docs/images.md):
#   cold (empty CARGO_TARGET_DIR, crates downloaded)  22 min cargo + 7 s
#   first release build of the operator, rest warm   9 min 20 s (cargo 560 s)
#   warm, binaries relinked: rootfs + check + pack   5–7 s (16–24 s under load)
#   warm, nothing changed                            0.8 s (cargo no-op, archive kept)
#   image: 79 MB rootfs = docker-archive (one layer), ~30 MB gzipped
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/rust-env.sh
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"

out_dir="$SENSORFLOW_CACHE/images" tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out_dir="${2:?--out needs a directory}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    -h|--help) sed -n '/^# Usage:/,/^# Prints/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $1 (usage: scripts/build-images.sh [--out DIR] [--tag TAG])" ;;
  esac
done
if [ -z "$tag" ]; then
  tag="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)"
  [ -n "$tag" ] || die "no version in [workspace.package] of Cargo.toml"
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $tag is not a valid image tag"
name="sensorflow/sensorflow:$tag"
archive="$out_dir/sensorflow-$tag.tar"

# The binaries of the image and the packages that hold them (the operator's Deployment, the
# pipeline Deployments it builds and the demo use these paths).
bins=(sensorflow-operator window-processor join-predict gcs-sink replay sensorflow)
packages=(sensorflow-operator sensorflow-apps sensorflow-tools sensorflow-sink)
apt_install binutils ca-certificates python3

t0=$SECONDS
log "cargo build --release: ${bins[*]}"
cargo_args=(build --release --quiet)
for p in "${packages[@]}"; do cargo_args+=(-p "$p"); done
for b in "${bins[@]}"; do cargo_args+=(--bin "$b"); done
cargo "${cargo_args[@]}"
bin_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
log "cargo build done in $((SECONDS - t0)) s"

up_to_date=1
if [ ! -f "$archive" ]; then
  up_to_date=0
else
  for f in "${bins[@]/#/$bin_dir/}" "$0" "$REPO_ROOT/scripts/oci-image.sh"; do
    if [ "$f" -nt "$archive" ]; then up_to_date=0; break; fi
  done
fi
if [ "$up_to_date" -eq 1 ]; then
  log "$archive is newer than the binaries: not repacked ($((SECONDS - t0)) s)"
  printf '%s\n' "$archive"
  exit 0
fi

# --- root filesystem ---------------------------------------------------------------------
t1=$SECONDS
mkdir -p "$out_dir"
rootfs="$(mktemp -d "$out_dir/.rootfs-$tag.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"
install -d -m 0755 "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot"
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || die "cargo did not produce $bin_dir/$b"
  # The release profile keeps line tables for local backtraces; the image drops them (5x
  # smaller) and keeps the symbol table, so backtraces still name functions.
  strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done

# Shared libraries: ldd lists `name => /path (addr)` lines and the loader as `/path (addr)`.
# Each goes to the same path inside the rootfs (symlinks resolved): the binaries' PT_INTERP
# names the loader's path, and without an ld.so.cache the loader searches /lib/<triplet> and
# /usr/lib/<triplet>, where Debian keeps these.
libs=()
for b in "${bins[@]}"; do
  ldd_out="$(ldd "$bin_dir/$b")" || die "ldd $b failed (not a dynamic executable?)"
  if grep -q 'not found' <<<"$ldd_out"; then die "$b: missing libraries on the build host: $ldd_out"; fi
  while read -r lib; do libs+=("$lib"); done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$ldd_out")
done
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
for lib in "${libs[@]}"; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
[ -s /etc/ssl/certs/ca-certificates.crt ] || die "no /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates)"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
log "rootfs: ${#bins[@]} binaries, ${#libs[@]} libraries ($(basename -a "${libs[@]}" | tr '\n' ' ')), $(du -sh "$rootfs" | cut -f1) in $((SECONDS - t1)) s"

# --- verify the rootfs: every binary starts inside it, as the pods' user ---------------------
t2=$SECONDS
for b in "${bins[@]}"; do
  if [ "$(id -u)" -eq 0 ]; then
    run=("$(command -v chroot)" --userspec=65532:65532 "$rootfs")
  else
    run=("$(command -v unshare)" --user --map-root-user "$(command -v chroot)" "$rootfs")
  fi
  if ! help_out="$(env -i PATH=/usr/local/bin HOME=/home/nonroot "${run[@]}" "/usr/local/bin/$b" --help 2>&1)"; then
    die "$b --help fails inside the rootfs: $help_out"
  fi
  [ -n "$help_out" ] || die "$b --help printed nothing inside the rootfs"
done
log "verified: ${bins[*]} run --help inside the rootfs as 65532:65532 ($((SECONDS - t2)) s)"

# --- pack and check the archive ---------------------------------------------------------------
t3=$SECONDS
# Image `created` and file times: the last commit's time, so a rebuild of the same commit gives
# the same layer digest.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO_ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH
"$REPO_ROOT/scripts/oci-image.sh" --rootfs "$rootfs" --name "$name" --out "$archive" \
  --entrypoint /usr/local/bin/sensorflow-operator --user 65532:65532 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
skopeo --insecure-policy inspect --config "docker-archive:$archive" | python3 -c '
import json, sys
cfg = json.load(sys.stdin)["config"]
assert cfg.get("User") == "65532:65532", cfg.get("User")
assert cfg.get("Entrypoint") == ["/usr/local/bin/sensorflow-operator"], cfg.get("Entrypoint")
' || die "$archive: wrong user or entrypoint (skopeo inspect --config)"
repo_tags="$(tar -xOf "$archive" manifest.json | python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)[0]["RepoTags"]))')"
[ "$repo_tags" = "docker.io/$name" ] || die "$archive is named '$repo_tags', expected docker.io/$name"
log "packed $repo_tags: $(du -h "$archive" | cut -f1) archive, $((SECONDS - t3)) s; total $((SECONDS - t0)) s"
printf '%s\n' "$archive"
