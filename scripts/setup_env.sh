# Sourced by ./dev: use the active virtualenv or make .venv, then install lowbit with its pins.
# Re-installs only when pyproject.toml changed (a stamp holds its hash).
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv" >&2
    python3 -m venv .venv
  fi
  source .venv/bin/activate
fi
stamp="$VIRTUAL_ENV/.lowbit-setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
# The import check runs outside the repo, so it sees the installed package (an editable
# install made before lowbit/__init__.py existed would be an empty namespace package).
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || \
   ! (cd / && python -c "import lowbit, sys; sys.exit(lowbit.__file__ is None)") 2>/dev/null; then
  echo "[setup] installing lowbit and pinned dependencies into $VIRTUAL_ENV" >&2
  python -m pip install -q --upgrade pip >&2
  # torch first and alone, pinned: the CPU build on disk, never a CUDA build from the index.
  python -m pip install -q "torch==2.13.0" >&2
  python -m pip install -q -e ".[tune,models,train,search,tt,dev]" >&2
  echo "$want" > "$stamp"
fi
