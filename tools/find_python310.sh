#!/usr/bin/env bash
# Print the path of a working CPython 3.10 (PATH first, then pyenv), or nothing.
# nncase 1.x, the only K210 compiler, has wheels for CPython 3.7-3.10 only.
ok() { "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }
for c in python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
  p=$(command -v "$c" 2>/dev/null) && ok "$p" && { echo "$p"; exit 0; }
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -rV); do
    p=$(PYENV_VERSION=$v pyenv which python3.10 2>/dev/null) && ok "$p" && { echo "$p"; exit 0; }
  done
fi
exit 1
