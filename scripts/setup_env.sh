# Sourced by ./dev: use the active virtualenv or make .venv, then install lowbit and the exact
# development stack of constraints.txt (pyproject.toml declares the ranges a user may install).
# Re-installs only when pyproject.toml or constraints.txt changed (a stamp holds their hash).
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv" >&2
    python3 -m venv .venv
  fi
  source .venv/bin/activate
fi
stamp="$VIRTUAL_ENV/.lowbit-setup-stamp"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
# The import check runs outside the repo, so it sees the installed package (an editable
# install made before lowbit/__init__.py existed would be an empty namespace package).
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || \
   ! (cd / && python -c "import lowbit, sys; sys.exit(lowbit.__file__ is None)") 2>/dev/null; then
  echo "[setup] installing lowbit and the pinned development stack (constraints.txt) into $VIRTUAL_ENV" >&2
  python -m pip install -q --upgrade pip >&2
  # torch first and alone, pinned: the CPU build on disk, never a CUDA build from the index.
  python -m pip install -q -c constraints.txt torch >&2
  python -m pip install -q -c constraints.txt -e ".[tune,models,train,search,tt,report,dev]" >&2
  echo "$want" > "$stamp"
fi
# The report page test opens the page in Debian's headless chromium (with chromedriver).
if [ "${cmd:-}" = test ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium and chromium-driver (the report page test)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver || \
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
          chromium-driver; }; } >/dev/null 2>&1 || \
      echo "[setup] could not install chromium: the browser test will skip, saying so" >&2
  else
    echo "[setup] no chromium (and not root): the browser test will skip, saying so" >&2
  fi
fi
