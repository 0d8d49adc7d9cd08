# Shared by scripts/try and scripts/test (sourced, not run): the Python environment both use.
#
# ensure_env PROFILE creates the virtual environment $EDGEFLEET_VENV (default .venv in the
# repository) and installs PROFILE's packages into it, editable, so code changes need no
# reinstall. What it installed is stamped in the venv (a hash of the packages' pyproject.toml
# files and the profile); a second run with nothing changed skips pip entirely.

EDGEFLEET_VENV=${EDGEFLEET_VENV:-.venv}
TORCH_PIN="torch==2.13.0" # the CPU build: an unpinned torch pulls several GB of CUDA packages

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# The packages of each profile, editable, relative to the repository.
profile_packages() {
    case "$1" in
    demo) echo "-e shared -e agent[onnx,litert] -e controller[compress,tflite]" ;;
    test)
        echo "-e shared[test] -e agent[onnx,litert,test]" \
            "-e controller[compress,tflite,tensorflow,postgres,test] ruff==0.17.6 mypy==2.4.1"
        ;;
    *) die "unknown profile $1" ;;
    esac
}

# Profiles whose stamp also satisfies PROFILE (the test profile holds everything the demo needs).
satisfied_by() {
    case "$1" in
    demo) echo "demo test" ;;
    *) echo "$1" ;;
    esac
}

# Run a system package manager command as root (directly, or through sudo without a password).
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

APT_UPDATED=0
# apt_install WHY PACKAGE...: install Debian/Ubuntu packages, saying which and why. Returns 1
# (after saying what to run) where it cannot: no apt-get, or no root.
apt_install() {
    local why=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        printf 'warning: %s needs %s; install it with your package manager\n' "$why" "$*" >&2
        return 1
    fi
    say "installing $* with apt-get ($why)"
    if [ "$APT_UPDATED" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || {
            printf 'warning: cannot run apt-get as root: run sudo apt-get install %s\n' "$*" >&2
            return 1
        }
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
        printf 'warning: apt-get install %s failed\n' "$*" >&2
        return 1
    }
}

# A python3 of 3.11 or later that can create virtual environments (Debian: python3-venv).
find_python() {
    PYTHON=${PYTHON:-python3}
    command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH: install Python 3.11 or later"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$PYTHON" -V 2>&1) is too old: edgefleet needs Python 3.11 or later"
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        local minor
        minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "creating a virtual environment" "python${minor}-venv" ||
            die "$PYTHON cannot create virtual environments: install python${minor}-venv"
    fi
}

stamp_of() {
    local profile=$1
    {
        echo "$profile"
        profile_packages "$profile"
        echo "$TORCH_PIN"
        cat shared/pyproject.toml agent/pyproject.toml controller/pyproject.toml
        "$EDGEFLEET_VENV/bin/python" -V 2>&1
    } | sha256sum | cut -d' ' -f1
}

ensure_env() {
    local profile=$1 wanted have p
    if [ -x "$EDGEFLEET_VENV/bin/python" ]; then
        for p in $(satisfied_by "$profile"); do
            wanted=$(stamp_of "$p")
            have=$(cat "$EDGEFLEET_VENV/.edgefleet-$p" 2>/dev/null || true)
            if [ "$wanted" = "$have" ]; then
                say "environment $EDGEFLEET_VENV is up to date ($p packages)"
                return 0
            fi
        done
    else
        find_python
        say "creating the virtual environment $EDGEFLEET_VENV"
        "$PYTHON" -m venv "$EDGEFLEET_VENV"
        "$EDGEFLEET_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    fi
    local pip=("$EDGEFLEET_VENV/bin/python" -m pip --disable-pip-version-check)
    local started=$SECONDS
    say "installing the $profile packages into $EDGEFLEET_VENV (the first time: a few minutes)"
    # torch first, pinned: the CPU build (see TORCH_PIN)
    "${pip[@]}" install -q "$TORCH_PIN"
    set -f # the extras' brackets are not globs
    # shellcheck disable=SC2046  # the profile's words are separate arguments
    "${pip[@]}" install -q $(profile_packages "$profile")
    set +f
    stamp_of "$profile" >"$EDGEFLEET_VENV/.edgefleet-$profile"
    say "installed in $((SECONDS - started)) s; $(du -sh "$EDGEFLEET_VENV" | cut -f1) on disk"
}
