#!/usr/bin/env bash
# Install, upgrade or remove tepi on Raspberry Pi OS / Debian 12 (bookworm), aarch64 or x86_64.
#
#   sudo systemd/install.sh [--bundle FILE.tar.gz|DIR [--key PUB.pem]] [--no-start] [--python PATH] [--prefix DIR]
#   sudo systemd/install.sh --uninstall [--purge] [--prefix DIR]
#
# Install (also the upgrade: run it again with the new checkout or bundle):
#   - the system user tepi (group tepi, member of dialout, home /var/lib/tepi, no login shell);
#   - a new venv /opt/tepi/venv-VERSION-TIME with tepi in it; /opt/tepi/venv is a symlink to it,
#     switched only once the new venv is complete and accepts the config. The previous venv is
#     kept for a rollback, older ones are removed;
#     from a checkout: pip install -c constraints.txt . (needs PyPI);
#     from a bundle (systemd/bundle.sh): copied to a private directory (root, 0700), its
#     MANIFEST's Ed25519 signature verified with openssl against /etc/tepi/bundle-signing.pub
#     (or --key), every file checked against MANIFEST, links refused; then pip install
#     --no-index --require-hashes from its wheels, with the MANIFEST's sha256 (no network);
#   - /etc/tepi/tepi.yaml from the commented sample, only if there is none (a config is never
#     overwritten), root:tepi 0640; /etc/tepi/secrets (root:root 0700) for the MQTT password;
#   - /var/lib/tepi (tepi:tepi 0750), the buffer;
#   - /etc/systemd/system/tepi.service, daemon-reload, enable --now (restart on an upgrade);
#     tepi-update.service and tepi-update.path (the agent update, docs/update.md) beside it,
#     the path unit enabled with the service;
#     Not started: with --no-start, while tepi.yaml is the unedited sample, when `tepi check`
#     rejects the config, when the secret the unit loads is missing, or without systemd.
# Needs python3 (>= 3.11.2) with its venv module (python3-venv, part of Raspberry Pi OS). From a
# checkout a missing python3-venv is installed with apt; a bundle needs no network at all, so
# there it must already be present.
#
# --uninstall: stop and disable the service, remove the unit and /opt/tepi. /etc/tepi (config,
# secrets) and /var/lib/tepi (the buffer, with readings not yet sent) and the user stay, unless
# --purge, which removes them too, and /var/log/tepi.
#
# --prefix DIR: a scratch root (DESTDIR): every path is under DIR, and what would change the
# machine itself (useradd, usermod, userdel, chown to tepi, systemctl, apt-get) is printed as
# "would run: ..." instead. The tests run it so. A venv is not relocatable: a tree built with
# --prefix is for inspection, not for copying to a device.
#
# Exit codes: 0 done; 1 failed (the message says what to do); 2 wrong usage.

set -euo pipefail
umask 022

PROG=${0##*/}
SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

ROOT=""
BUNDLE=""
KEY=""
PYTHON=/usr/bin/python3
START=1
ACTION=install
PURGE=0

# Set while running; the EXIT trap cleans up after a failure.
TMP=""
NEW_VENV=""
SWITCHED=0

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: sudo $PROG [--bundle FILE.tar.gz|DIR [--key PUB.pem]] [--no-start] [--python PATH] [--prefix DIR]
       sudo $PROG --uninstall [--purge] [--prefix DIR]

Install or upgrade tepi: user tepi, /opt/tepi/venv, /etc/tepi/tepi.yaml (from a commented
sample, never overwritten), the systemd unit, enabled and started.

  --bundle FILE   install from an offline bundle (systemd/bundle.sh): no network needed
  --key FILE      the Ed25519 public key the bundle's signature is verified with (default
                  /etc/tepi/bundle-signing.pub; installed there when there is none)
  --no-start      install and enable nothing: do not enable or (re)start the service
  --python PATH   the Python to build the venv with (default /usr/bin/python3)
  --prefix DIR    install into the scratch root DIR; only print what would change the machine
  --uninstall     stop and remove the service and /opt/tepi; keep /etc/tepi and /var/lib/tepi
  --purge         with --uninstall: also remove /etc/tepi, /var/lib/tepi, /var/log/tepi, user tepi

Exit codes: 0 done, 1 failed, 2 wrong usage.
EOF
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    printf 'run %s --help for the options\n' "$PROG" >&2
    exit 2
}

cleanup() {
    if [[ -n $NEW_VENV && $SWITCHED == 0 ]]; then
        rm -rf -- "$NEW_VENV"
    fi
    if [[ -n $TMP ]]; then
        rm -rf -- "$TMP"
    fi
}
trap cleanup EXIT

while (($#)); do
    case $1 in
        --bundle)
            (($# >= 2)) || usage_error "--bundle needs a file"
            BUNDLE=$2
            shift 2
            ;;
        --prefix)
            (($# >= 2)) || usage_error "--prefix needs a directory"
            ROOT=$(realpath -m -- "$2")
            [[ $ROOT != / ]] || usage_error "--prefix / is the machine itself: leave --prefix out"
            shift 2
            ;;
        --key)
            (($# >= 2)) || usage_error "--key needs a file"
            KEY=$(realpath -m -- "$2")
            shift 2
            ;;
        --python)
            (($# >= 2)) || usage_error "--python needs a path"
            PYTHON=$2
            shift 2
            ;;
        --no-start) START=0 && shift ;;
        --uninstall) ACTION=uninstall && shift ;;
        --purge) PURGE=1 && shift ;;
        -h | --help) usage && exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done
if ((PURGE)) && [[ $ACTION != uninstall ]]; then
    usage_error "--purge goes with --uninstall"
fi
if [[ $ACTION == uninstall && -n $BUNDLE ]]; then
    usage_error "--bundle is for installing, not with --uninstall"
fi
if [[ -z $ROOT && $EUID -ne 0 ]]; then
    die "run it as root: sudo $0 $*"
fi

OPT=$ROOT/opt/tepi
VENV_LINK=$OPT/venv
ETC=$ROOT/etc/tepi
CONFIG=$ETC/tepi.yaml
SECRETS=$ETC/secrets
ETC_KEY=$ETC/bundle-signing.pub
SECRET=$SECRETS/mqtt-password
UNIT=$ROOT/etc/systemd/system/tepi.service
UNITS_DIR=$ROOT/etc/systemd/system
UPDATE_UNITS=(tepi-update.service tepi-update.path)
STATE=$ROOT/var/lib/tepi
LOGS=$ROOT/var/log/tepi

# Commands that change the machine itself (users, packages, ownership): printed, not run, in a
# scratch root.
host() {
    if [[ -n $ROOT ]]; then
        printf 'would run: %s\n' "$*"
    else
        say "$*"
        "$@"
    fi
}

systemd_running() {
    command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]
}

# systemctl, or why it is not run. Returns systemctl's own status.
sysctl() {
    if [[ -n $ROOT ]]; then
        printf 'would run: systemctl %s\n' "$*"
        return 0
    fi
    if ! systemd_running; then
        say "skipped (systemd is not running here): systemctl $*"
        return 0
    fi
    say "systemctl $*"
    systemctl "$@"
}

# rm -rf, only of the paths this script owns.
remove_tree() {
    case $1 in
        "$OPT" | "$ETC" | "$STATE" | "$LOGS") ;;
        *) die "internal: refusing to remove $1" ;;
    esac
    if [[ -e $1 || -L $1 ]]; then
        rm -rf -- "$1"
        say "removed $1"
    fi
}

# ---- uninstall -------------------------------------------------------------------------------

uninstall() {
    if [[ -e $UNIT ]]; then
        if [[ -z $ROOT ]] && systemd_running; then
            systemctl disable --now tepi.service || warn "could not stop tepi: see systemctl status tepi"
        else
            sysctl disable --now tepi.service
        fi
        rm -f -- "$UNIT"
        say "removed $UNIT"
        local unit
        for unit in "${UPDATE_UNITS[@]}"; do
            if [[ -e $UNITS_DIR/$unit ]]; then
                sysctl disable --now "$unit" || warn "could not stop $unit"
                rm -f -- "$UNITS_DIR/$unit"
                say "removed $UNITS_DIR/$unit"
            fi
        done
        sysctl daemon-reload
    else
        say "no unit at $UNIT: the service is not installed"
    fi
    remove_tree "$OPT"
    if ((PURGE)); then
        remove_tree "$ETC"
        remove_tree "$STATE"
        remove_tree "$LOGS"
        if [[ -n $ROOT ]]; then
            host userdel tepi
        elif getent passwd tepi >/dev/null; then
            host userdel tepi
        fi
        if [[ -z $ROOT ]] && getent group tepi >/dev/null; then
            host groupdel tepi
        fi
        say "tepi is removed, with its config, secrets and buffer"
    else
        say "kept $ETC (config, secrets) and $STATE (the buffer, with any readings not yet sent)"
        say "kept user tepi. To remove them too: $PROG --uninstall --purge"
    fi
}

# ---- where the files come from ---------------------------------------------------------------

# Sets SRC_KIND (bundle|checkout), VERSION, SRC_UNIT, SRC_SAMPLE, SRC_CONSTRAINTS, SRC_README,
# SRC_DOCS, SRC_INSTALLER, and for a bundle WHEELS and BUNDLE_PY, for a checkout SRC_TREE.
# A version as tepi writes it (PEP 440, the forms tepi uses): checked before it names a path.
VERSION_RE='^[0-9]+(\.[0-9]+){1,3}((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$'

check_version() {
    [[ $VERSION =~ $VERSION_RE ]] || die "refusing the version '$VERSION' from $1: not a version (digits and dots, e.g. 0.1.0)"
}

# The public key bundles are verified with: --key FILE, or the one installed in /etc/tepi.
signing_key() {
    if [[ -n $KEY ]]; then
        [[ -f $KEY && -r $KEY ]] || die "cannot read the public key $KEY"
        printf '%s\n' "$KEY"
    elif [[ -f $ETC_KEY ]]; then
        printf '%s\n' "$ETC_KEY"
    else
        die "no public key to verify the bundle with: put the builder's Ed25519 public key in $ETC_KEY, or give --key FILE (see docs/operations.md, Signing bundles)"
    fi
}

# The bundle is copied into a private directory (root, 0700) first, and only that copy is
# checked and used: nobody can change it between the check and the use. Symbolic links, and
# anything but regular files and directories, are refused.
copy_bundle() {
    local dest=$TMP/bundle odd
    install -d -m 0700 "$dest"
    if [[ -d $BUNDLE ]]; then
        odd=$(find "$BUNDLE" -mindepth 1 ! -type f ! -type d -printf '%P\n' | head -5)
        [[ -z $odd ]] || die "refusing the bundle: it holds symbolic links or special files: $odd"
        cp -R --no-preserve=ownership,mode -- "$BUNDLE/." "$dest/" || die "cannot copy $BUNDLE"
    elif [[ -f $BUNDLE ]]; then
        say "unpacking $BUNDLE"
        # Only regular files and directories: a link in a bundle is refused, not followed.
        odd=$(tar -tvzf "$BUNDLE" | awk 'substr($0, 1, 1) != "-" && substr($0, 1, 1) != "d"' | head -5) ||
            die "cannot read $BUNDLE: is it a tepi bundle (.tar.gz)?"
        [[ -z $odd ]] || die "refusing the bundle: it holds symbolic links or special files: $odd"
        tar -xzf "$BUNDLE" -C "$dest" --no-same-owner --no-same-permissions ||
            die "cannot unpack $BUNDLE: is it a tepi bundle (.tar.gz)?"
    else
        die "no bundle at $BUNDLE"
    fi
    # The copy is what counts: checked again, now that nobody else can change it.
    odd=$(find "$dest" -mindepth 1 ! -type f ! -type d -printf '%P\n' | head -5)
    [[ -z $odd ]] || die "refusing the bundle: it holds symbolic links or special files: $odd"
    local dirs
    if [[ -f $dest/MANIFEST ]]; then
        BUNDLE_DIR=$dest
    else
        mapfile -t dirs < <(find "$dest" -mindepth 2 -maxdepth 2 -name MANIFEST -printf '%h\n')
        ((${#dirs[@]} == 1)) || die "$BUNDLE is not a tepi bundle: no single directory with a MANIFEST"
        BUNDLE_DIR=${dirs[0]}
    fi
}

find_bundle() {
    command -v openssl >/dev/null || die "no openssl to verify the bundle's signature: it is part of Debian 12 and Raspberry Pi OS (apt-get install openssl)"
    local key
    key=$(signing_key)
    copy_bundle
    [[ -f $BUNDLE_DIR/MANIFEST && -f $BUNDLE_DIR/bundle.info ]] || die "$BUNDLE is not a tepi bundle: no MANIFEST or bundle.info"
    [[ -f $BUNDLE_DIR/MANIFEST.sig ]] || die "refusing the bundle: it is not signed (no MANIFEST.sig). Build it with bundle.sh --key"
    if ! openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$BUNDLE_DIR/MANIFEST" \
        -sigfile "$BUNDLE_DIR/MANIFEST.sig" >/dev/null 2>&1; then
        die "refusing the bundle: its signature does not verify with $key (not built with the matching key, or changed since)"
    fi
    say "bundle signature verified ($key)"
    if ! (cd -- "$BUNDLE_DIR" && sha256sum --quiet --strict -c MANIFEST); then
        die "the bundle is damaged: the files above do not match their sha256 in MANIFEST (copy the bundle again)"
    fi
    local extra
    extra=$(cd -- "$BUNDLE_DIR" && comm -23 <(find . -type f ! -name MANIFEST ! -name MANIFEST.sig -printf '%P\n' | LC_ALL=C sort) \
        <(sed 's/^[0-9a-f]*  //' MANIFEST | LC_ALL=C sort))
    [[ -z $extra ]] || die "the bundle has files that are not in its MANIFEST: $extra"
    say "bundle checksums match (MANIFEST)"
    if [[ -n $KEY && ! -e $ETC_KEY ]]; then
        install -d -m 0755 "$ETC"
        install -m 0644 "$KEY" "$ETC_KEY"
        say "installed $ETC_KEY: later bundles are verified with it"
    fi
    SRC_KIND=bundle
    VERSION=$(sed -n 's/^version=//p' "$BUNDLE_DIR/bundle.info")
    check_version "$BUNDLE_DIR/bundle.info"
    BUNDLE_PY=$(sed -n 's/^python=//p' "$BUNDLE_DIR/bundle.info")
    [[ $BUNDLE_PY =~ ^3\.[0-9]+$ ]] || die "$BUNDLE_DIR/bundle.info has no valid python"
    local platforms machine
    platforms=$(sed -n 's/^platforms=//p' "$BUNDLE_DIR/bundle.info")
    machine=$(uname -m)
    if [[ " $platforms " != *" $machine "* ]]; then
        die "this bundle has wheels for: $platforms; this machine is $machine (32-bit Raspberry Pi OS is armv7l: use the 64-bit one)"
    fi
    WHEELS=$BUNDLE_DIR/wheels
    SRC_UNIT=$BUNDLE_DIR/tepi.service
    SRC_SAMPLE=$BUNDLE_DIR/tepi.yaml.sample
    SRC_CONSTRAINTS=$BUNDLE_DIR/constraints.txt
    SRC_README=$BUNDLE_DIR/doc/README.md
    SRC_DOCS=$BUNDLE_DIR/doc/docs
    SRC_INSTALLER=$BUNDLE_DIR/install.sh
}

# pip's requirements with --require-hashes, from the (signed) MANIFEST: each wheel's
# name==version with the sha256 of every wheel of it (one per platform).
hashed_requirements() {
    awk '$2 ~ /^wheels\/.*\.whl$/ {
            f = substr($2, 8); n = split(f, p, "-")
            if (n < 5) { print "bad wheel name: " f > "/dev/stderr"; exit 1 }
            key = p[1] "==" p[2]
            if (!(key in h)) order[++k] = key
            h[key] = h[key] " --hash=sha256:" $1
        }
        END { for (i = 1; i <= k; i++) print order[i] h[order[i]] }' "$BUNDLE_DIR/MANIFEST"
}

find_source() {
    if [[ -z $BUNDLE && -f $SELF_DIR/MANIFEST && -d $SELF_DIR/wheels ]]; then
        # install.sh run from an unpacked bundle: that bundle.
        BUNDLE=$SELF_DIR
    fi
    if [[ -n $BUNDLE ]]; then
        find_bundle
        return
    fi
    local repo
    repo=$(cd -- "$SELF_DIR/.." && pwd)
    if [[ ! -f $repo/pyproject.toml || ! -f $SELF_DIR/tepi.service ]]; then
        die "$SELF_DIR is not in a tepi checkout: install from a bundle with --bundle FILE"
    fi
    SRC_KIND=checkout
    SRC_TREE=$repo
    # The version is written once, in the core package (pyproject.toml reads it from there).
    VERSION=$(sed -n 's/^__version__ = "\([^"]*\)".*$/\1/p' "$repo/drivers/tepi/core/__init__.py")
    [[ -n $VERSION ]] || die "no version in $repo/drivers/tepi/core/__init__.py"
    check_version "$repo/drivers/tepi/core/__init__.py"
    SRC_UNIT=$SELF_DIR/tepi.service
    SRC_SAMPLE=$SELF_DIR/tepi.yaml.sample
    SRC_CONSTRAINTS=$repo/constraints.txt
    SRC_README=$repo/README.md
    SRC_DOCS=$repo/docs
    SRC_INSTALLER=$SELF_DIR/install.sh
}

# ---- Python ------------------------------------------------------------------------------------

check_python() {
    command -v "$PYTHON" >/dev/null || die "no Python at $PYTHON: apt-get install python3 (or give --python PATH)"
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$PYTHON does not run"
    if [[ $SRC_KIND == bundle ]]; then
        [[ $version == "$BUNDLE_PY" ]] || die "the bundle's wheels are for Python $BUNDLE_PY; $PYTHON is $version (Debian 12 and Raspberry Pi OS bookworm have 3.11; or give --python PATH)"
    fi
    # 3.11.2: Debian 12's and Raspberry Pi OS bookworm's, the oldest tepi is tested on
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11, 2))' || die "tepi needs Python >= 3.11.2; $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())')"
    if "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        return
    fi
    if [[ $SRC_KIND == bundle ]]; then
        die "$PYTHON cannot make a venv: python3-venv is missing. Raspberry Pi OS has it; on a minimal Debian install it first (apt-get install python3-venv, from a mirror or the Debian media): a bundle install uses no network"
    fi
    command -v apt-get >/dev/null || die "$PYTHON cannot make a venv (python3-venv is missing) and there is no apt-get to install it"
    say "python3-venv is missing: installing it"
    host apt-get update
    host env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    if [[ -z $ROOT ]]; then
        "$PYTHON" -c 'import ensurepip, venv' || die "$PYTHON still cannot make a venv after installing python3-venv"
    fi
}

# pip with no configuration or PIP_* variable of the machine: a bundle installs from its own
# wheels only, whatever /etc/pip.conf says (Raspberry Pi OS's points at piwheels.org).
isolated_pip() {
    (
        while IFS= read -r var; do
            unset "$var"
        done < <(compgen -e | grep '^PIP_' || true)
        export PIP_CONFIG_FILE=/dev/null
        "$NEW_VENV/bin/pip" "$@"
    )
}

build_venv() {
    local name
    name=venv-$VERSION-$(date -u +%Y%m%dT%H%M%SZ)
    if [[ -e $OPT/$name ]]; then
        name=$name-$$
    fi
    install -d -m 0755 "$OPT"
    NEW_VENV=$OPT/$name
    say "creating $NEW_VENV"
    "$PYTHON" -m venv "$NEW_VENV" || die "$PYTHON -m venv $NEW_VENV failed (see above)"
    if [[ $SRC_KIND == bundle ]]; then
        say "installing tepi $VERSION from the bundle's wheels (no network)"
        hashed_requirements >"$TMP/requirements.txt" || die "cannot read the wheels in MANIFEST"
        grep -qx "tepi==$VERSION .*" "$TMP/requirements.txt" || die "the bundle has no wheel of tepi $VERSION"
        isolated_pip install --no-index --find-links "$WHEELS" --only-binary=:all: \
            --no-cache-dir --disable-pip-version-check --no-input --quiet \
            --require-hashes -r "$TMP/requirements.txt" -c "$SRC_CONSTRAINTS" ||
            die "pip could not install tepi $VERSION from $WHEELS (see above): is the bundle for this machine ($(uname -m))?"
    else
        # A copy of the tree: building in the checkout would leave root-owned build/ and
        # *.egg-info/ in it.
        local src=$TMP/src
        mkdir -p "$src"
        tar -C "$SRC_TREE" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.mypy_cache \
            --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . |
            tar -C "$src" -xf -
        say "installing tepi $VERSION from $SRC_TREE with the pins of constraints.txt (from PyPI)"
        "$NEW_VENV/bin/pip" install --disable-pip-version-check --no-input --quiet \
            -c "$SRC_CONSTRAINTS" "$src" ||
            die "pip could not install tepi from $SRC_TREE (see above): is PyPI reachable? Without a network use a bundle (systemd/bundle.sh)"
    fi
    "$NEW_VENV/bin/tepi" --version >/dev/null || die "the new $NEW_VENV/bin/tepi does not run"
}

# ---- the user, directories, config -----------------------------------------------------------

ensure_user() {
    local nologin=/usr/sbin/nologin
    if [[ -n $ROOT ]]; then
        host useradd --system --user-group --groups dialout --home-dir /var/lib/tepi --no-create-home --shell "$nologin" tepi
        return
    fi
    getent group dialout >/dev/null || die "there is no group dialout (the serial ports' group on Debian): is this Debian / Raspberry Pi OS?"
    if getent passwd tepi >/dev/null; then
        if id -nG tepi | tr ' ' '\n' | grep -qx dialout; then
            say "user tepi exists, in group dialout"
        else
            host usermod --append --groups dialout tepi
        fi
    else
        host useradd --system --user-group --groups dialout --home-dir /var/lib/tepi --no-create-home --shell "$nologin" tepi
    fi
}

# The modes match the unit's: ConfigurationDirectory= (0755, root) and StateDirectoryMode=0750.
# A different mode on an existing directory makes systemd warn at every start.
make_dirs() {
    install -d -m 0755 "$ETC"
    # systemd reads the secrets (LoadCredential=), not the agent: root's alone.
    install -d -m 0700 "$SECRETS"
    chmod 0700 "$SECRETS"
    host chown root:root "$SECRETS"
    install -d -m 0750 "$STATE"
    host chown tepi:tepi "$STATE"
    if [[ -e $CONFIG ]]; then
        say "kept $CONFIG (a config is never overwritten; the new sample is in $OPT/share/tepi.yaml.sample)"
    else
        install -m 0640 "$SRC_SAMPLE" "$CONFIG"
        host chown root:tepi "$CONFIG"
        say "wrote $CONFIG from the commented sample: edit it for this site"
    fi
}

install_files() {
    local share=$OPT/share
    rm -rf -- "$share"
    install -d -m 0755 "$share" "$share/doc" "$share/doc/docs"
    install -m 0644 "$SRC_SAMPLE" "$share/tepi.yaml.sample"
    # So that --uninstall works without the checkout or the bundle.
    install -m 0755 "$SRC_INSTALLER" "$share/install.sh"
    install -m 0644 "$SRC_README" "$share/doc/README.md"
    install -m 0644 "$SRC_DOCS"/*.md "$share/doc/docs/"
    install -d -m 0755 "$(dirname -- "$UNIT")"
    install -m 0644 "$SRC_UNIT" "$UNIT"
    say "installed $UNIT"
    # The agent update's privileged half (docs/update.md); a bundle older than it has none.
    local unit
    for unit in "${UPDATE_UNITS[@]}"; do
        if [[ -f $(dirname -- "$SRC_UNIT")/$unit ]]; then
            install -m 0644 "$(dirname -- "$SRC_UNIT")/$unit" "$UNITS_DIR/$unit"
            say "installed $UNITS_DIR/$unit"
        fi
    done
}

# The current venv, if /opt/tepi/venv is one of ours (a symlink to venv-*).
previous_venv() {
    if [[ -L $VENV_LINK ]]; then
        local target
        target=$(readlink -- "$VENV_LINK")
        if [[ $target == venv-* && -d $OPT/$target ]]; then
            printf '%s\n' "$OPT/$target"
        fi
    fi
}

switch_venv() {
    if [[ -d $VENV_LINK && ! -L $VENV_LINK ]]; then
        # A venv made by hand (the first version of the docs): replaced, not kept.
        mv -T -- "$VENV_LINK" "$OPT/venv-by-hand-$$"
    fi
    ln -sfn -- "${NEW_VENV##*/}" "$OPT/.venv-new-$$"
    mv -Tf -- "$OPT/.venv-new-$$" "$VENV_LINK"
    SWITCHED=1
    say "$VENV_LINK -> ${NEW_VENV##*/}"
}

prune_venvs() {
    local keep_prev=$1 dir
    for dir in "$OPT"/venv-*; do
        [[ -d $dir ]] || continue
        if [[ $dir != "$NEW_VENV" && $dir != "$keep_prev" ]]; then
            rm -rf -- "$dir"
            say "removed the old $dir"
        fi
    done
}

# ---- install -----------------------------------------------------------------------------------

install_tepi() {
    TMP=$(mktemp -d)
    find_source
    check_python
    local prev was_active=0 config_valid=1 check_out
    prev=$(previous_venv)
    build_venv
    ensure_user
    make_dirs

    # The new version must accept the config before it replaces a running one.
    if check_out=$("$NEW_VENV/bin/tepi" check --config "$CONFIG" --no-files 2>&1); then
        say "tepi check: $check_out"
    else
        config_valid=0
        printf '%s\n' "$check_out" >&2
        if [[ -n $prev ]]; then
            die "tepi $VERSION rejects $CONFIG (above): nothing was changed, the installed version still runs. Fix the config and run this again"
        fi
    fi

    if [[ -z $ROOT ]] && systemd_running && systemctl is-active --quiet tepi.service; then
        was_active=1
    fi
    switch_venv
    install_files
    sysctl daemon-reload
    prune_venvs "$prev"
    say "installed tepi $VERSION from the $SRC_KIND: $NEW_VENV ($(du -sh "$NEW_VENV" | cut -f1))"

    local next="sudo systemctl enable --now tepi"
    if ((!START)); then
        say "not started (--no-start). To start it: $next"
        if ((was_active)); then
            say "the running service still runs the old version until: sudo systemctl restart tepi"
        fi
        return 0
    fi
    if cmp -s "$CONFIG" "$SRC_SAMPLE"; then
        say "not started: $CONFIG is the unedited sample. Next:"
        say "  1. edit $CONFIG for this site (gateway.id, uplink, devices)"
        say "  2. put the MQTT password (one line) in $SECRET:"
        say "       sudo sh -c 'umask 077; cat > $SECRET'"
        say "  3. sudo -u tepi $VENV_LINK/bin/tepi check --config $CONFIG --no-files"
        say "  4. $next"
        return 0
    fi
    if ((!config_valid)); then
        die "not started: $CONFIG is invalid (above). Fix it, check it with '$VENV_LINK/bin/tepi check --config $CONFIG', then: $next"
    fi
    # The unit starts without the file (SetCredential= is its default), but a config that
    # names the credential needs it.
    if [[ ! -e $SECRET ]] && grep -Eq '^[[:space:]]+password_file:[[:space:]]*["'\'']?mqtt-password["'\'']?[[:space:]]*(#.*)?$' "$CONFIG"; then
        die "not started: the config's password_file is the unit's credential from $SECRET, and there is none. Create it (root:root 0600, one line): sudo sh -c 'umask 077; cat > $SECRET', or remove password_file from $CONFIG if the broker needs no password; then: $next"
    fi
    if [[ -z $ROOT ]] && ! systemd_running; then
        say "not started: systemd is not running here (not booted with systemd). Once it is: $next"
        return 0
    fi
    local failed=0
    if ((was_active)); then
        sysctl enable tepi.service || failed=1
        ((failed)) || sysctl restart tepi.service || failed=1
    else
        sysctl enable --now tepi || failed=1
    fi
    if ((!failed)) && [[ -f $UNITS_DIR/tepi-update.path ]]; then
        # Updates from the IOC (the update command): only for a service that runs.
        sysctl enable --now tepi-update.path || warn "could not enable tepi-update.path: updates from the IOC will wait (systemctl status tepi-update.path)"
    fi
    if ((failed)); then
        local hint="see: systemctl status tepi; journalctl -u tepi -n 50"
        if [[ -n $prev ]]; then
            hint+=". To go back to the previous version: sudo ln -sfn ${prev##*/} $VENV_LINK && sudo systemctl restart tepi"
        fi
        die "tepi $VERSION did not start: $hint"
    fi
    if [[ -z $ROOT ]]; then
        say "tepi $VERSION is running: tepi status, or systemctl status tepi"
    fi
}

case $ACTION in
    install) install_tepi ;;
    uninstall) uninstall ;;
esac
