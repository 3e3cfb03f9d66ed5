#!/usr/bin/env bash
# Install the system packages the integration tests need (real sshd, vsftpd,
# nginx, proftpd with mod_sftp, ssh-keygen, openssl, PostgreSQL, and the
# libssh2/openssl build deps). Idempotent: only installs
# what is missing, runs `apt-get update` at most once. Safe with CI=true and
# no stdin. Never removes a package: the install is simulated first
# (`apt-get -s`) and, if it would remove anything, the script stops naming
# the packages; the install itself runs with `--no-remove`.
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
# (FTP, FTPS) and its mod_sftp; openssl hashes nginx's htpasswd.
need /usr/sbin/nginx nginx
need openssl openssl
# Debian 12's own curl (7.88.1): the API answers it over HTTP/2 (tests/curl_http2.rs).
need /usr/bin/curl curl
# proftpd-core and vsftpd conflict in Debian (both provide "ftp-server"), so
# installing one removes the other. proftpd is unpacked instead (below);
# here come the libraries it and mod_sftp/mod_tls (proftpd-mod-crypto) link.
need_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
    log "missing package $1"
    missing+=("$1")
}
for p in libacl1 libcap2 libcrypt1 libhiredis0.14 libidn2-0 libmemcached11 \
    libmemcachedutil2 libncursesw6 libpam0g libpcre2-8-0 libpcre2-posix3 \
    libssl3 libtinfo6 zlib1g libsodium23; do
    need_pkg "$p"
done
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
# The management site's browser tests: a real headless Chromium driven over
# WebDriver (tests/common/browser.rs); the two packages are lock-stepped.
need /usr/bin/chromium chromium
need /usr/bin/chromedriver chromium-driver
# Japanese glyphs for the site's screenshots (the UI is in Japanese).
need /usr/share/fonts/opentype/ipafont-gothic/ipag.ttf fonts-ipafont-gothic
# OpenPGP deliveries: tests/pgp.rs and bench/run.sh --pgp make keys and
# encrypted files with GnuPG, as partners do.
need gpg gnupg
# PostgreSQL 15 for the store's tests (tests/common/pg.rs): the tests run
# initdb/postgres/pg_basebackup/pg_ctl from here as the `postgres` user in
# clusters of their own; the package's own cluster service is not used.
need /usr/lib/postgresql/15/bin/initdb postgresql
need /usr/lib/postgresql/15/bin/pg_basebackup postgresql
need psql postgresql-client
need runuser util-linux

# `promtool check metrics` lints /metrics (Debian ships it in prometheus;
# the server itself is installed but never started by the tests).
need /usr/bin/promtool prometheus
# The partner API's document is checked with openapi-spec-validator and
# schemathesis from PyPI, in a virtualenv (below).
need python3 python3
need_pkg python3-venv
# axe-core (npm, below) checks the site's pages for accessibility in the
# browser tests; npm fetches it.
need node nodejs
need npm npm

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
    # A wanted package that conflicts with an installed one would make apt
    # remove the installed one (vsftpd and proftpd-core both provide
    # ftp-server). Ask apt first, and stop rather than remove anything.
    sim=$("${SUDO[@]}" apt-get install -s -q --no-install-recommends "${missing[@]}" </dev/null 2>&1) || {
        log "ERROR: apt-get cannot install ${missing[*]}:"
        printf '%s\n' "$sim" | sed 's/^/install-deps:   /'
        exit 1
    }
    removed=$(printf '%s\n' "$sim" | awk '$1 == "Remv" { print $2 }' | sort -u | tr '\n' ' ')
    if [[ -n "${removed// /}" ]]; then
        log "ERROR: installing ${missing[*]} would REMOVE installed package(s): ${removed% }"
        log "  (a wanted package conflicts with them; nothing was installed or removed)"
        log "  install the wanted packages yourself once you decide what may go, e.g.:"
        log "  apt-get install --no-install-recommends ${missing[*]}"
        exit 1
    fi
    log "apt-get install -y --no-remove --no-install-recommends ${missing[*]}"
    "${SUDO[@]}" apt-get install -y -q --no-remove --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
    log "installed: ${missing[*]}"
fi

# proftpd 1.3.8 from Debian's own packages, unpacked (not installed) under
# PROFTPD_ROOT; the tests run $PROFTPD_ROOT/usr/sbin/proftpd with
# ModulePath $PROFTPD_ROOT/usr/lib/proftpd.
PROFTPD_ROOT=/opt/milebatch-test/proftpd
if [[ -x $PROFTPD_ROOT/usr/sbin/proftpd && -f $PROFTPD_ROOT/usr/lib/proftpd/mod_sftp.so \
    && -f $PROFTPD_ROOT/usr/lib/proftpd/mod_tls.so ]]; then
    log "proftpd present in $PROFTPD_ROOT"
else
    [[ $(id -u) -eq 0 ]] || { log "ERROR: unpacking proftpd needs root"; exit 1; }
    work=$(mktemp -d)
    chmod 0777 "$work"
    if ! (cd "$work" && apt-get download -q proftpd-core proftpd-mod-crypto </dev/null); then
        log "apt-get update (for apt-get download)"
        apt-get update -q </dev/null
        (cd "$work" && apt-get download -q proftpd-core proftpd-mod-crypto </dev/null)
    fi
    mkdir -p "$PROFTPD_ROOT"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$PROFTPD_ROOT"; done
    rm -rf "$work"
    "$PROFTPD_ROOT/usr/sbin/proftpd" -v
    log "unpacked proftpd into $PROFTPD_ROOT"
fi

# mdBook builds the guide under docs/ (tests/docs.rs). Built from
# crates.io with the toolchain in use (a few minutes on 2 cores); when it
# cannot be installed this stops with the reason: the docs test is never
# skipped for want of it.
MDBOOK_VERSION=0.5.4
if command -v mdbook >/dev/null 2>&1 || [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/mdbook ]]; then
    log "mdbook present"
else
    log "cargo install mdbook --locked --version $MDBOOK_VERSION"
    if ! cargo install mdbook --locked --version "$MDBOOK_VERSION" </dev/null; then
        log "ERROR: could not install mdbook $MDBOOK_VERSION, which tests/docs.rs needs to build docs/;"
        log "  install it by hand (cargo install mdbook --locked) and run this again"
        exit 1
    fi
    log "installed mdbook $MDBOOK_VERSION"
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

# openapi-spec-validator and schemathesis (PyPI) for tests/api_answers.rs,
# in their own virtualenv so that Debian's Python stays as it is.
# Pinned: schemathesis's command line changes between releases.
PYVENV=/opt/milebatch-test/pyvenv
# Whether the venv has PACKAGE at VERSION. Not `pip show | grep -q`: grep
# exits at the match, pip dies of SIGPIPE, and pipefail made that "no", so
# every run installed again.
pip_has() {
    local out
    out=$("$PYVENV/bin/pip" show "$1" 2>/dev/null) || return 1
    grep -qx "Version: $2" <<<"$out"
}
OSV_VERSION=0.9.0
ST_VERSION=4.32.5
if [[ -x $PYVENV/bin/openapi-spec-validator && -x $PYVENV/bin/st ]] \
    && pip_has schemathesis "$ST_VERSION"; then
    log "openapi-spec-validator and schemathesis present in $PYVENV"
else
    [[ $(id -u) -eq 0 ]] || { log "ERROR: making $PYVENV needs root"; exit 1; }
    mkdir -p "$(dirname "$PYVENV")"
    [[ -x $PYVENV/bin/pip ]] || python3 -m venv "$PYVENV"
    "$PYVENV/bin/pip" install -q "openapi-spec-validator==$OSV_VERSION" "schemathesis==$ST_VERSION" </dev/null
    log "installed openapi-spec-validator and schemathesis into $PYVENV"
fi

# aiosmtpd (PyPI): the real SMTP server of tests/notify.rs (STARTTLS,
# implicit TLS, AUTH), in the same virtualenv.
AIOSMTPD_VERSION=1.4.6
if pip_has aiosmtpd "$AIOSMTPD_VERSION"; then
    log "aiosmtpd present in $PYVENV"
else
    [[ $(id -u) -eq 0 ]] || { log "ERROR: installing aiosmtpd into $PYVENV needs root"; exit 1; }
    "$PYVENV/bin/pip" install -q "aiosmtpd==$AIOSMTPD_VERSION" </dev/null
    log "installed aiosmtpd into $PYVENV"
fi

# axe-core from the npm registry for the site's accessibility checks
# (tests/common/browser.rs injects axe.min.js into each page). Pinned, and
# installed only into its own git-ignored folder in this tree
# (tests/support/axe/node_modules): nothing global, nothing else removed.
AXE_VERSION=4.14.1
AXE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/support/axe"
if [[ -f $AXE_DIR/node_modules/axe-core/axe.min.js ]] \
    && grep -q "\"version\": \"$AXE_VERSION\"" "$AXE_DIR/node_modules/axe-core/package.json"; then
    log "axe-core $AXE_VERSION present in $AXE_DIR"
else
    mkdir -p "$AXE_DIR"
    log "npm install axe-core@$AXE_VERSION into $AXE_DIR"
    if ! npm install --prefix "$AXE_DIR" --no-audit --no-fund --ignore-scripts \
        "axe-core@$AXE_VERSION" </dev/null; then
        log "ERROR: could not install axe-core $AXE_VERSION, which tests/site.rs needs;"
        log "  check access to the npm registry and run this again"
        exit 1
    fi
    log "installed axe-core $AXE_VERSION"
fi
