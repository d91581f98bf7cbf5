# Sourced by scripts/make-test-data.sh and scripts/crosscheck/run.sh: the cross-check venv.
#
#   crosscheck_venv DEFAULT_PATH   sets VENV to $CROSSCHECK_VENV (or DEFAULT_PATH), creates it
#                                  if missing and pip-installs scripts/crosscheck/requirements.txt
#                                  unless CROSSCHECK_NO_INSTALL=1. Run from the repository root.
crosscheck_venv() {
    VENV="${CROSSCHECK_VENV:-$1}"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating venv $VENV"
        python3 -m venv "$VENV"
    fi
    if [ "${CROSSCHECK_NO_INSTALL:-0}" != "1" ]; then
        echo "== pip install -r scripts/crosscheck/requirements.txt"
        "$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check -r scripts/crosscheck/requirements.txt
    fi
}
