#!/usr/bin/env bash
# Makes the image deploy/Dockerfile starts FROM, debian:bookworm-slim, without a registry: a
# Debian bookworm root filesystem from debootstrap, trimmed the way the official slim image is,
# tarred, and `podman import`ed as docker.io/library/debian:bookworm-slim.
#
#   deploy/images/base.sh [PODMAN_GLOBAL_OPTION...]
#
# The options go to every podman command, so the image lands in the storage they name, e.g.
#   deploy/images/base.sh --root /some/storage --runroot /some/run
# (none: podman's default storage). deploy/images/test.sh calls it with storage of its own.
#
# Cached under IMAGES_CACHE (default target/images): debs/ (debootstrap's downloads) and
# debian-bookworm-slim.tar. The tarball is reused while present (delete it to rebuild); the
# import is skipped when the storage already has an image made from this very tarball.
# Needs root (debootstrap chroots and makes device nodes), debootstrap and podman; the mirror is
# DEBIAN_MIRROR (default http://deb.debian.org/debian, as this machine's apt sources).
# About 30 s the first time on 2 cores (the package installs in the chroot: with its 31 MB of
# downloads already cached it takes as long), then seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

podman_opts=("$@")
cache=${IMAGES_CACHE:-target/images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=docker.io/library/debian:bookworm-slim
tarball=$cache/debian-bookworm-slim.tar

log() { echo "images/base: $*"; }
pm() { podman "${podman_opts[@]}" "$@"; }

if [ "$(id -u)" != 0 ]; then
  echo "images/base: needs root (debootstrap)" >&2
  exit 1
fi
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "images/base: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

if [ ! -s "$tarball" ]; then
  start=$SECONDS
  mkdir -p "$cache/debs"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  # A failed debootstrap leaves a half-made tree, perhaps with /proc or /sys still mounted in
  # it: those are unmounted first, and rm never leaves the tree's own filesystem.
  cleanup() {
    findmnt -rn -o TARGET | grep -F "$(realpath "$rootfs")/" | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$rootfs" "$tarball.part"
  }
  trap cleanup EXIT
  log "debootstrap --variant=minbase bookworm from $mirror (debs cached in $cache/debs)"
  if ! debootstrap --variant=minbase --cache-dir="$(realpath "$cache/debs")" \
    bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -n 20 "$cache/debootstrap.log" >&2
    echo "images/base: debootstrap failed; the whole log is $cache/debootstrap.log" >&2
    exit 1
  fi

  # What the official slim image has: apt and dpkg settings that keep images small (no docs,
  # man pages or translations from later installs, no kept .debs), and the deb822 sources of
  # bookworm, its updates and its security archive.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'APT::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  rm -f "$rootfs/etc/apt/sources.list"
  security=${mirror%/debian}/debian-security
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Trim: package lists and caches, docs (copyrights kept), man pages, translations, logs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/tmp/* "$rootfs"/root/.bash_history
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # Files the container engine provides at run time; a fresh one per container.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  rm -f "$rootfs/etc/machine-id" && : >"$rootfs/etc/machine-id"

  # Numeric owners and a fixed order: the same tree gives the same tarball.
  tar --numeric-owner --sort=name --xattrs -C "$rootfs" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  cleanup
  trap - EXIT
  log "made $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - start)) s"
fi

# The image remembers which tarball it came from; another tarball replaces it.
sum=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$(pm image inspect --format '{{index .Labels "flash-sale.base.tarball"}}' "$image" 2>/dev/null || true)" = "$sum" ]; then
  log "$image is present (from $tarball)"
else
  start=$SECONDS
  pm import --quiet \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL flash-sale.base.tarball=$sum" \
    "$tarball" "$image" >/dev/null
  log "imported $tarball as $image in $((SECONDS - start)) s"
fi
