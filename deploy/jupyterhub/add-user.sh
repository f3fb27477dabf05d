#!/usr/bin/env bash
# Add a course member on the hub's machine (as root): bash add-user.sh learner|instructor NAME
# Creates the Unix user with a private home folder (mode 700: nobody else reads their work) in the course's
# group (nbgrader-vitlab for learners, formgrade-vitlab for instructors), then asks for their password.
set -euo pipefail
case "${1:-}" in
  learner) group=nbgrader-vitlab ;;
  instructor) group=formgrade-vitlab ;;
  *) echo "usage: bash add-user.sh learner|instructor NAME" >&2; exit 2 ;;
esac
name=${2:?usage: bash add-user.sh learner|instructor NAME}
groupadd -f "$group"
if id "$name" >/dev/null 2>&1; then usermod -a -G "$group" "$name"; else useradd -m -s /bin/bash -G "$group" "$name"; fi
chmod 700 "$(getent passwd "$name" | cut -d: -f6)"
if [ -t 0 ]; then passwd "$name"; else echo "set $name's password with: passwd $name"; fi
