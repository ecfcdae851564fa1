#!/usr/bin/env bash
# Build the offline bundle: one tarball that installs tepi on a Raspberry Pi OS / Debian 12
# machine with no network (a site whose APN reaches only the IOC).
#
#   systemd/bundle.sh --key SIGNING.pem [--native] [--with EXTRA] [--python PATH] OUT.tar.gz
#
# It holds, in tepi-bundle-VERSION/:
#   wheels/            a wheel of tepi (pip wheel --no-deps .) and of every runtime dependency,
#                      pinned by constraints.txt, for CPython 3.11 on manylinux aarch64 AND
#                      x86_64 (the [test] extras are not in it);
#   install.sh         the installer: sudo ./install.sh (or install.sh --bundle OUT.tar.gz);
#   tepi.service, tepi-update.service, tepi-update.path (the agent update, docs/update.md),
#   tepi.yaml.sample, constraints.txt, doc/ (README.md, docs/*.md);
#   bundle.info        version, Python, platforms, source;
#   README.txt         how to install, and the wheels of each platform;
#   MANIFEST           the sha256 of every file (sha256sum -c MANIFEST); install.sh checks it;
#   MANIFEST.sig       the Ed25519 signature of MANIFEST, made with --key (openssl pkeyutl
#                      -rawin); install.sh refuses a bundle without a good one.
#
# Every dependency must have a binary wheel for both platforms (no compiler on the device):
# pip download --only-binary=:all: fails otherwise, and then an offline resolution from the
# bundle alone (pip install --dry-run --no-index) is run for each platform.
#
# --key:    the builder's Ed25519 private key (PEM, from openssl genpkey -algorithm ed25519;
#           never in the repository). Required: an unsigned bundle would not install.
# --native: only this machine's platform (a smaller bundle, for tests).
# --with EXTRA: also tepi's optional dependencies EXTRA (pyproject.toml's extras; repeat it
#           for more): `--with detector` carries onnxruntime and what it needs for the camera
#           detector (docs/vision.md), 23-28 MB a platform more. install.sh installs every
#           wheel of a bundle, so a site gets the extra by installing such a bundle.
# --python: the Python whose pip does the work (default: python3). It must be 3.11, the
#           devices' Python: pip evaluates the dependencies' markers (python_version < "3.11")
#           for the Python it runs in, not for --python-version.
# Needs the network (PyPI) and reuses pip's cache.
#
# Exit codes: 0 built; 1 failed; 2 wrong usage.

set -euo pipefail
umask 022

PROG=${0##*/}
SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SELF_DIR/.." && pwd)
TARGET_PY=3.11
# The oldest 3.11 the devices run (Debian 12's and Raspberry Pi OS bookworm's), for pip's
# Requires-Python checks: "3.11" alone would mean 3.11.0, which tepi does not support.
TARGET_PY_FULL=3.11.2
ALL_ARCHES=(aarch64 x86_64)

PYTHON=python3
NATIVE=0
OUT=""
KEY=""
WORK=""
EXTRAS=()

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s\nusage: %s --key SIGNING.pem [--native] [--with EXTRA] [--python PATH] OUT.tar.gz\n' "$PROG" "$*" "$PROG" >&2
    exit 2
}
cleanup() {
    if [[ -n $WORK ]]; then
        rm -rf -- "$WORK"
    fi
    if [[ -n $OUT ]]; then
        rm -f -- "$OUT.part"
    fi
}
trap cleanup EXIT

while (($#)); do
    case $1 in
        --native) NATIVE=1 && shift ;;
        --key)
            (($# >= 2)) || usage_error "--key needs a file"
            KEY=$2
            shift 2
            ;;
        --with)
            (($# >= 2)) || usage_error "--with needs an extra's name (e.g. detector)"
            [[ $2 =~ ^[a-z][a-z0-9-]*$ ]] || usage_error "not an extra's name: $2"
            EXTRAS+=("$2")
            shift 2
            ;;
        --python)
            (($# >= 2)) || usage_error "--python needs a path"
            PYTHON=$2
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        -*) usage_error "unknown option: $1" ;;
        *)
            [[ -z $OUT ]] || usage_error "one output file only"
            OUT=$1
            shift
            ;;
    esac
done
[[ -n $OUT ]] || usage_error "no output file"
[[ -n $KEY ]] || usage_error "no signing key: --key SIGNING.pem (see docs/operations.md, Signing bundles)"
[[ $OUT == *.tar.gz ]] || usage_error "the output is a .tar.gz: $OUT"
OUT=$(realpath -m -- "$OUT")
[[ -d $(dirname -- "$OUT") ]] || die "no directory for $OUT"
[[ -f $REPO/pyproject.toml && -f $REPO/constraints.txt ]] || die "$REPO is not a tepi checkout"
for extra in "${EXTRAS[@]}"; do
    # The runtime extras tepi declares, not the test one.
    [[ $extra != test ]] || usage_error "--with test: a bundle is for devices, not for tests"
    "$PYTHON" -c 'import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"].get("optional-dependencies", {})
sys.exit(sys.argv[2] not in extras)' "$REPO/pyproject.toml" "$extra" ||
        usage_error "tepi has no optional dependencies named $extra ([project.optional-dependencies] in pyproject.toml)"
done
EXTRA_SPEC=""
if ((${#EXTRAS[@]})); then
    EXTRA_SPEC="[$(IFS=,; echo "${EXTRAS[*]}")]"
fi

command -v openssl >/dev/null || die "no openssl: apt-get install openssl"
[[ -f $KEY && -r $KEY ]] || die "cannot read the signing key $KEY"
openssl pkey -in "$KEY" -noout -text 2>/dev/null | grep -q '^ED25519 Private-Key' ||
    die "$KEY is not an Ed25519 private key (openssl genpkey -algorithm ed25519 -out $KEY)"
command -v "$PYTHON" >/dev/null || die "no Python at $PYTHON (give --python PATH)"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $py_version == "$TARGET_PY" ]] || die "$PYTHON is Python $py_version: build with a Python $TARGET_PY (the devices' own), e.g. --python .venv/bin/python"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip: apt-get install python3-pip, or --python .venv/bin/python"

if ((NATIVE)); then
    ARCHES=("$(uname -m)")
    [[ " ${ALL_ARCHES[*]} " == *" ${ARCHES[0]} "* ]] || die "this machine is ${ARCHES[0]}: bundles are for ${ALL_ARCHES[*]}"
else
    ARCHES=("${ALL_ARCHES[@]}")
fi

platform_args() {
    local arch=$1
    printf '%s\n' --only-binary=:all: --python-version "$TARGET_PY_FULL" --implementation cp \
        --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" \
        --platform "manylinux_2_28_$arch"
}

WORK=$(mktemp -d)

# ---- tepi's own wheel, built from a copy (pip would leave build/ and *.egg-info/ in the tree).
say "building the tepi wheel"
mkdir -p "$WORK/src" "$WORK/tepi"
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache \
    --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . | tar -C "$WORK/src" -xf -
"$PYTHON" -m pip wheel --no-deps --disable-pip-version-check --quiet \
    --wheel-dir "$WORK/tepi" "$WORK/src" || die "pip wheel could not build tepi (see above)"
shopt -s nullglob
tepi_wheels=("$WORK"/tepi/tepi-*.whl)
shopt -u nullglob
((${#tepi_wheels[@]} == 1)) || die "expected one tepi wheel, got: ${tepi_wheels[*]:-none}"
TEPI_WHEEL=${tepi_wheels[0]}
VERSION=$(basename -- "$TEPI_WHEEL" | cut -d- -f2)
NAME=tepi-bundle-$VERSION
STAGE=$WORK/$NAME
mkdir -p "$STAGE/wheels"
cp -- "$TEPI_WHEEL" "$STAGE/wheels/"

# ---- the dependencies, per platform, then an offline resolution from the bundle alone.
for arch in "${ARCHES[@]}"; do
    say "downloading the wheels for $arch (CPython $TARGET_PY, manylinux)"
    mapfile -t plat < <(platform_args "$arch")
    if ! "$PYTHON" -m pip download --disable-pip-version-check --quiet "${plat[@]}" \
        -c "$REPO/constraints.txt" --dest "$WORK/dl-$arch" "$TEPI_WHEEL$EXTRA_SPEC"; then
        die "a dependency has no $arch wheel for CPython $TARGET_PY (the package pip names above): a bundle must install without a compiler; pin a version with $arch wheels in constraints.txt"
    fi
    cp -n -- "$WORK/dl-$arch"/*.whl "$STAGE/wheels/"
done

PIP_REPORTS=()
for arch in "${ARCHES[@]}"; do
    say "checking that the bundle alone installs tepi on $arch"
    mapfile -t plat < <(platform_args "$arch")
    if ! (
        while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PIP_' || true)
        PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip install --dry-run --quiet \
            --disable-pip-version-check --no-index --find-links "$STAGE/wheels" "${plat[@]}" \
            --target "$WORK/dry-$arch" --report "$WORK/report-$arch.json" \
            -c "$REPO/constraints.txt" "tepi$EXTRA_SPEC==$VERSION"
    ); then
        die "the bundle cannot install tepi on $arch without a network (see above)"
    fi
    PIP_REPORTS+=("$arch=$WORK/report-$arch.json")
done

# Every platform gets the same distributions, and every one of them is in the bundle.
"$PYTHON" - "$STAGE/wheels" "${PIP_REPORTS[@]}" >"$WORK/wheels.txt" <<'EOF' || die "the platforms' dependencies differ (above)"
import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

wheels = Path(sys.argv[1])
names = {}
lines = []
for arg in sys.argv[2:]:
    arch, report = arg.split("=", 1)
    installs = json.loads(Path(report).read_text())["install"]
    names[arch] = {i["metadata"]["name"].lower().replace("_", "-") for i in installs}
    lines.append(f"{arch}:")
    for i in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        file = Path(unquote(urlparse(i["download_info"]["url"]).path))
        if file.parent != wheels:
            sys.exit(f"{arch}: {file} is not from the bundle")
        lines.append(f"  {file.name}")
first = next(iter(names.values()))
for arch, found in names.items():
    if found != first:
        sys.exit(f"{arch}: not the same distributions: {sorted(found ^ first)}")
print("\n".join(lines))
EOF
count=$(find "$STAGE/wheels" -name '*.whl' | wc -l)
say "$count wheels, every dependency for: ${ARCHES[*]}"

# ---- the installer, the unit, the sample, the docs.
install -m 0755 "$SELF_DIR/install.sh" "$STAGE/install.sh"
install -m 0644 "$SELF_DIR/tepi.service" "$SELF_DIR/tepi-update.service" "$SELF_DIR/tepi-update.path" \
    "$SELF_DIR/tepi.yaml.sample" "$REPO/constraints.txt" "$STAGE/"
install -d "$STAGE/doc/docs"
install -m 0644 "$REPO/README.md" "$STAGE/doc/"
install -m 0644 "$REPO"/docs/*.md "$STAGE/doc/docs/"

source_rev=unknown
if git -C "$REPO" rev-parse --short HEAD >/dev/null 2>&1; then
    source_rev=git-$(git -C "$REPO" rev-parse --short HEAD)
    if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]]; then
        source_rev+=-modified
    fi
fi
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$STAGE/bundle.info" <<EOF
name=tepi
version=$VERSION
python=$TARGET_PY
platforms=${ARCHES[*]}
extras=${EXTRAS[*]}
built=$built
source=$source_rev
EOF

cat >"$STAGE/README.txt" <<EOF
tepi $VERSION offline bundle: every wheel for CPython $TARGET_PY on ${ARCHES[*]}.
Built $built from $source_rev. Optional parts included: ${EXTRAS[*]:-none}.

Install (Raspberry Pi OS / Debian 12 bookworm, 64-bit; needs python3 and python3-venv,
both part of Raspberry Pi OS; uses no network):

    tar -xzf $NAME.tar.gz
    sudo $NAME/install.sh

or, without unpacking: sudo install.sh --bundle $NAME.tar.gz (any tepi install.sh).
Run it again with a newer bundle to upgrade; /etc/tepi/tepi.yaml is never overwritten.
Remove: sudo /opt/tepi/share/install.sh --uninstall [--purge]. See doc/docs/operations.md.

MANIFEST holds the sha256 of every file: sha256sum -c MANIFEST. MANIFEST.sig is its Ed25519
signature: install.sh verifies it against /etc/tepi/bundle-signing.pub (or --key FILE) first.

The wheels each platform installs:
$(cat "$WORK/wheels.txt")
EOF

(cd -- "$STAGE" && find . -type f ! -name MANIFEST ! -name MANIFEST.sig -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 sha256sum --) >"$WORK/MANIFEST"
mv -- "$WORK/MANIFEST" "$STAGE/MANIFEST"
openssl pkeyutl -sign -rawin -inkey "$KEY" -in "$STAGE/MANIFEST" -out "$STAGE/MANIFEST.sig" ||
    die "openssl could not sign the MANIFEST with $KEY"
say "signed MANIFEST with $KEY (public key sha256 $(openssl pkey -in "$KEY" -pubout -outform DER | sha256sum | cut -d' ' -f1))"

tar -C "$WORK" --sort=name --owner=0 --group=0 --numeric-owner -czf "$OUT.part" "$NAME"
mv -f -- "$OUT.part" "$OUT"
say "wrote $OUT ($(du -h "$OUT" | cut -f1), sha256 $(sha256sum "$OUT" | cut -d' ' -f1))"
