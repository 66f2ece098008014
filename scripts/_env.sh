# Shared by scripts/demo and scripts/test: a Python >= 3.11 virtualenv in .venv with
# Curbside installed (editable). Source it with the extras to install as $1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
say() { printf 'curbside: %s\n' "$*" >&2; }
as_root() { [ "$(id -u)" -eq 0 ]; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "python3 is not installed; install Python 3.11 or newer first"; exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "Python 3.11 or newer is needed; $PYTHON is $("$PYTHON" -V 2>&1)"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if as_root && command -v apt-get >/dev/null 2>&1; then
      say "installing python3-venv with apt-get"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      say "Python's venv module is missing: run 'sudo apt-get install python3-venv' and retry"; exit 1
    fi
  fi
  "$PYTHON" -m venv .venv
fi
extras=${1:-}
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing curbside${extras:+[$extras]} into .venv"
  .venv/bin/python -m pip install -qq --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -qq --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
