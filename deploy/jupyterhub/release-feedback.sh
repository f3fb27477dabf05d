#!/usr/bin/env bash
# Return feedback through nbgrader's exchange, after `python -m autograder grade --exchange --chapter CHAPTER
# --out GRADING`: bash deploy/jupyterhub/release-feedback.sh CHAPTER GRADING
# Learners then press "Fetch Feedback" in the Assignments tab (or run nbgrader fetch_feedback CHAPTER).
# nbgrader files each page under a hash of the submission's secret, so only the learner who submitted it can
# fetch it: the secret and the time stamp come from the collected submission that was graded.
set -euo pipefail
chapter=${1:?usage: release-feedback.sh CHAPTER GRADING}
grading=$(realpath "${2:?usage: release-feedback.sh CHAPTER GRADING}")
course=$(cd "$(dirname "$0")/../.." && pwd)
for submission in "$grading"/collected/*/"$chapter"; do
  feedback="$grading/feedback/$(basename "$(dirname "$submission")")/$chapter"
  if [ -d "$feedback" ]; then cp "$submission/timestamp.txt" "$submission/submission_secret.txt" "$feedback/"; fi
done
nbgrader release_feedback "$chapter" --NbGrader.config_file="$course/autograder/nbgrader_config" \
  --CourseDirectory.root="$grading"
