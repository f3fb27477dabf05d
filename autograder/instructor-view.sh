#!/usr/bin/env bash
# Switch nbgrader's instructor extensions in the JupyterLab of .venv on or off (restart JupyterLab after it).
#   bash autograder/instructor-view.sh on    formgrader, course list, Create Assignment: the instructor's view
#   bash autograder/instructor-view.sh off   the learner's view (setup.sh's default): Validate and Assignments only
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  on) verb=enable ;;
  off) verb=disable ;;
  *) echo "usage: bash autograder/instructor-view.sh on|off" >&2; exit 2 ;;
esac
# The lab extensions' plugins (written to .venv/etc/jupyter/labconfig/page_config.json) ...
.venv/bin/jupyter labextension "$verb" --level=sys_prefix \
  @jupyter/nbgrader:formgrader @jupyter/nbgrader:course-list @jupyter/nbgrader:create-assignment >/dev/null
# ... and the server extensions behind them (.venv/etc/jupyter/jupyter_server_config.d/nbgrader.json).
.venv/bin/jupyter server extension "$verb" --sys-prefix \
  nbgrader.server_extensions.formgrader nbgrader.server_extensions.course_list >/dev/null 2>&1
echo "nbgrader's instructor extensions: $1 (restart JupyterLab to see the change)"
