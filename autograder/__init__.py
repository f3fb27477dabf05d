"""The vitlab course's nbgrader set-up: its config, a feedback preprocessor, and the instructor's CLI."""
