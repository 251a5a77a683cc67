"""The layering of DESIGN.md: the device side never loads the build stack, and a process that
checks signatures in child processes (the agent's daemon) never loads cryptography."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD_STACK = ("onnx", "skl2onnx", "sklearn", "onnxconverter_common", "skops", "scipy")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return {line.split(".")[0] for line in done.stdout.splitlines()}


def test_verifying_and_running_a_bundle_never_imports_the_build_stack() -> None:
    modules = loaded_after(
        "import edgeml.toolkit.bundle, edgeml.toolkit.runtime, edgeml.toolkit.golden, "
        "edgeml.toolkit.drift, edgeml.toolkit.contract, edgeml.toolkit.tabular, "
        "edgeml.toolkit.profiles, edgeml.toolkit.trust, edgeml.agent, edgeml.fleet"
    )
    assert not modules & set(BUILD_STACK), modules & set(BUILD_STACK)


def test_with_checks_in_child_processes_verifying_a_bundle_never_loads_cryptography(
    built_bundle: Path, key_dir: Path
) -> None:
    opened = (
        "from edgeml.toolkit.signatures import check_in_child_processes\n"
        "from edgeml.toolkit.scoring import ScoringEngine\n"
        "from edgeml.toolkit.trust import load_trust_store\n"
        "{switch}"
        f"engine = ScoringEngine.open({str(built_bundle)!r}, load_trust_store({str(key_dir)!r}))\n"
        "assert engine.bundle_id"
    )
    assert "cryptography" not in loaded_after(opened.format(switch="check_in_child_processes()\n"))
    assert "cryptography" in loaded_after(opened.format(switch=""))  # checked in the process


def test_the_cli_root_loads_the_build_stack_only_when_building() -> None:
    modules = loaded_after("import edgeml.toolkit.cli")
    assert not modules & set(BUILD_STACK), modules & set(BUILD_STACK)


def test_the_kernel_never_imports_a_side() -> None:
    import re
    from pathlib import Path

    pattern = re.compile(r"^\s*(?:from|import)\s+edgeml\.(converters|agent|fleet)\b", re.MULTILINE)
    root = Path(__file__).resolve().parents[1] / "toolkit"
    offenders = []
    for path in root.rglob("*.py"):
        if "cli" in path.relative_to(root).parts:
            continue
        offenders += [
            f"{path.name} imports edgeml.{side}" for side in pattern.findall(path.read_text())
        ]
    assert offenders == []
