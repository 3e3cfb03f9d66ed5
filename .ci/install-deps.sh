#!/usr/bin/env bash
# Install the system packages the integration tests need (real sshd, vsftpd,
# nginx, proftpd with mod_sftp, ssh-keygen, openssl, and the libssh2/openssl
# build deps). Idempotent: only installs
# what is missing, runs `apt-get update` at most once. Safe with CI=true and
# no stdin.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { echo "install-deps: $*"; }

# tool-or-file -> debian package
declare -a missing=()
need() {
    local check="$1" pkg="$2"
    if [[ "$check" == /* ]]; then
        [[ -e "$check" ]] && return 0
    else
        command -v "$check" >/dev/null 2>&1 && return 0
    fi
    log "missing $check (package $pkg)"
    local p
    for p in "${missing[@]:-}"; do [[ "$p" == "$pkg" ]] && return 0; done
    missing+=("$pkg")
}

need /usr/sbin/sshd openssh-server
need /usr/lib/openssh/sftp-server openssh-server
need ssh-keygen openssh-client
need ssh openssh-client
need /usr/sbin/vsftpd vsftpd
# The servers partners run: nginx (HTTPS, basic auth, WebDAV PUT), proftpd
# (FTP, FTPS) and its mod_sftp. Debian 12 ships mod_sftp in proftpd-mod-crypto
# (it also carries mod_tls); openssl makes the test CA and host keys.
need /usr/sbin/nginx nginx
need /usr/sbin/proftpd proftpd-core
need /usr/lib/proftpd/mod_sftp.so proftpd-mod-crypto
need /usr/lib/proftpd/mod_tls.so proftpd-mod-crypto
need openssl openssl
need pkg-config pkg-config
# libssl-dev: check for the headers rather than a binary
need /usr/include/openssl/ssl.h libssl-dev
# The unit-hardening test (systemd-analyze security) and the fault tests
# (chattr +i: an unwritable database even for root; mount: a full disk).
need systemd-analyze systemd
need chattr e2fsprogs
need mount mount
need sqlite3 sqlite3
need /usr/bin/time time

if ((${#missing[@]} == 0)); then
    log "all packages present, nothing to install"
else
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            log "ERROR: not root and no passwordless sudo; please run:"
            log "  apt-get install -y --no-install-recommends ${missing[*]}"
            exit 1
        fi
    else
        SUDO=()
    fi
    log "apt-get update"
    "${SUDO[@]}" apt-get update -q </dev/null
    log "apt-get install -y --no-install-recommends ${missing[*]}"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
    log "installed: ${missing[*]}"
fi

# sshd refuses to start without its privilege-separation directory.
if [[ ! -d /run/sshd ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        mkdir -p /run/sshd && chmod 0755 /run/sshd
    else
        sudo -n mkdir -p /run/sshd && sudo -n chmod 0755 /run/sshd
    fi
    log "created /run/sshd"
else
    log "/run/sshd exists"
fi
