# Sourced by the scripts: create .venv on first use, install latentae (editable) with its test extras when
# pyproject.toml changed since the last install, and activate it.
VENV="${LATENTAE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV (first run: installs torch and friends, a few minutes)" >&2
  python3 -m venv "$VENV"
fi
stamp="$VENV/.latentae-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # (this machine's pip.conf names local indexes that may be absent: drop those warnings)
  "$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
