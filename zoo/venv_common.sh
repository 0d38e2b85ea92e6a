# Sourced by zoo/setup_*_venv.sh: what their Python environments share.

# apt_install_missing TAG PACKAGE...: installs the Debian packages not yet
# installed (root, or sudo), saying which; TAG prefixes the message.
apt_install_missing() {
    local tag=$1 p
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "$tag: installing ${missing[*]}"
        local sudo=""
        [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# make_venv DIR: a venv that sees the system site-packages (Debian's torch),
# unless DIR already holds one.
make_venv() {
    [[ -x "$1/bin/python" ]] || /usr/bin/python3 -m venv --system-site-packages "$1"
}
