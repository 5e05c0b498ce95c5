"""The README's set-up commands are the ones CI runs."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _bash_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```bash\n(.*?)\n```", f.read(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _bash_blocks()
    assert len(blocks) == 2, "the README has exactly two set-up commands"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_lines = [ln for ln in f.read().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci_lines == [blocks[1].strip()]


def test_main_command_runs_the_quickstart_training():
    assert _bash_blocks()[0].strip().endswith("python launch/tpu_train.py --gin_file=quickstart_cpu.gin")
    assert os.path.isfile(os.path.join(ROOT, "configs", "quickstart_cpu.gin"))
