"""The README's two commands are the ones that work: CI runs the test command, the open command opens chapters/."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    open_course, run_tests = commands
    assert "jupyter lab" in open_course and "--notebook-dir=chapters" in open_course and "--allow-root" in open_course
    assert open_course.startswith("bash setup.sh &&") and run_tests.startswith("bash setup.sh --test &&")
    assert "pytest" in run_tests


def test_readme_reopens_the_course_without_setting_up_again():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    reopen = blocks[2].strip()
    assert readme_commands()[0] == f"bash setup.sh && {reopen}"


def test_setup_installs_the_requirements_and_the_test_extras():
    setup = (ROOT / "setup.sh").read_text()
    assert "python3 -m venv .venv" in setup and ".venv/bin/pip install --progress-bar off -r requirements.txt" in setup
    assert "requirements-test.txt" in setup and "--no-deps timm==" in setup and "apt-get install" in setup


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_requirements_cap_torch_and_install_the_project():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "torch>=2.4,<=2.13.0" in lines
    assert "-e ." in lines
    assert not any(line.startswith("torchvision") for line in lines)
