"""The entry points' log output: this project's INFO lines, everyone's warnings, nobody else's
INFO."""

import subprocess
import sys

SCRIPT = """
import logging
from solo_stablerep.console import configure_logging
configure_logging()
logging.getLogger("data_gen.runner").info("ours-info")
logging.getLogger("solo_stablerep.data.readers").warning("ours-warning")
logging.getLogger("torch.distributed").info("theirs-info")
logging.getLogger("timm").warning("theirs-warning")
print("stdout-stays-clean")
"""


def test_configure_logging_shows_our_info_and_every_warning_on_stderr():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout-stays-clean\n"
    lines = result.stderr.splitlines()
    assert lines == [
        "data_gen.runner: ours-info",
        "solo_stablerep.data.readers: ours-warning",
        "timm: theirs-warning",
    ]
