#!/usr/bin/env bash
# Set up the course in .venv (run from the repository root; safe to run again).
#   bash setup.sh          the course: JupyterLab, nbgrader, vitlab and its dependencies
#   bash setup.sh --test   the same, plus what only the test suite uses (the --hub part included)
#   bash setup.sh --hub    the course plus JupyterHub and configurable-http-proxy (deploy/jupyterhub)
# JupyterLab shows the learner's view: nbgrader's instructor extensions (formgrader, course list, Create
# Assignment) are switched off; `bash autograder/instructor-view.sh on` switches them on (`off`: back).
# On the hub, deploy/jupyterhub gives instructors their view and learners theirs, whatever this switch says.
# System tools come from Debian's apt where this runs as root with apt: bubblewrap (the autograder's
# kernel sandbox) and, for the tests, chromium (the browser test). Elsewhere it says what is missing;
# the course itself runs without them.
set -euo pipefail
cd "$(dirname "$0")"
tools=(bubblewrap)
[ "${1:-}" = "--test" ] && tools+=(chromium)
missing=()
for tool in "${tools[@]}"; do
  command -v "${tool/bubblewrap/bwrap}" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} with apt-get"
    { apt-get install -y -q "${missing[@]}" || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }; } \
      >/tmp/vitlab-apt.log 2>&1 || echo "setup: could not install ${missing[*]} (see /tmp/vitlab-apt.log)" >&2
  else
    echo "setup: ${missing[*]} not installed; install with your package manager (Debian: apt-get install ${missing[*]})" >&2
  fi
fi
step() { echo "setup: $*"; }
step "creating .venv"
python3 -m venv .venv
step "installing PyTorch (CPU), JupyterLab, nbgrader and the course (a few minutes the first time)"
.venv/bin/pip install --progress-bar off -r requirements.txt \
  | { grep --line-buffered -E '^(Collecting|Successfully)' || true; }  # pip's own exit code counts (pipefail)
# Jupyter in .venv (JupyterLab's Assignment List and Validate button, the formgrader) reads the course's nbgrader
# configuration, wherever it is started from: course id, exchange folder, time limits.
mkdir -p .venv/etc/jupyter
printf 'load_subconfig(%s)\n' "'$PWD/autograder/nbgrader_config.py'" > .venv/etc/jupyter/nbgrader_config.py
step "configuring Jupyter: the course's nbgrader settings, .venv/bin on the terminals' PATH, the learner's view"
# The JupyterLab of .venv gives its terminals .venv/bin on PATH and opens them in the folder it serves.
printf 'load_subconfig(%s)\n' "'$PWD/autograder/jupyter_server_config.py'" > .venv/etc/jupyter/jupyter_server_config.py
bash autograder/instructor-view.sh off
if [ "${1:-}" = "--test" ]; then
  step "installing what only the tests use"
  # timm and open_clip without their dependencies: they would pull torchvision, whose wheels do not import
  # beside torch's CPU build; the tests stub it and compare vitlab's models with theirs on the same weights.
  .venv/bin/pip install -q -r requirements-test.txt
  .venv/bin/pip install -q --no-deps timm==1.0.31 open_clip_torch==3.3.0
fi
# ---- JupyterHub (--hub, and --test for the hub's end-to-end test): the hub from PyPI, its proxy from npm, both
# in .venv (the proxy as .venv/bin/configurable-http-proxy, where deploy/jupyterhub/jupyterhub_config.py looks).
if [ "${1:-}" = "--hub" ] || [ "${1:-}" = "--test" ]; then
  step "installing JupyterHub and configurable-http-proxy"
  .venv/bin/pip install -q "jupyterhub>=5.2,<6"
  if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing npm with apt-get"
    apt-get install -y -q npm >/tmp/vitlab-apt-npm.log 2>&1 || echo "setup: could not install npm (see /tmp/vitlab-apt-npm.log)" >&2
  fi
  if command -v npm >/dev/null; then
    npm install -g --prefix .venv configurable-http-proxy@4 >/tmp/vitlab-npm.log 2>&1 \
      || echo "setup: could not install configurable-http-proxy (see /tmp/vitlab-npm.log)" >&2
  else
    echo "setup: npm not installed; the hub needs it for configurable-http-proxy (Debian: apt-get install npm)" >&2
  fi
fi
# ---- end of the JupyterHub part
# jsonschema imports rfc3987-syntax whenever it is installed (jupyter-events pulls it in), and that module builds
# an IRI grammar at import: 2 to 3 s at the start of every nbgrader and jupyter command. Nothing here checks IRIs.
.venv/bin/pip uninstall -y -q rfc3987-syntax
step "done. Open the course (and later re-open it) with: .venv/bin/jupyter lab --allow-root --no-browser --ip=127.0.0.1 --notebook-dir=chapters"
