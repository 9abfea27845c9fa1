"""docker/Dockerfile installs what `make install` installs: the same requirement files and pins,
torchrec and the project with --no-deps, on a Python the project supports. (Base images cannot be
pulled here, so the build itself is not run.)"""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
REQUIREMENTS = ROOT / "requirements"


def pip_installs(text: str) -> list[str]:
    """Every ``pip install ...`` command of ``text`` (Makefile: ``$(PIP) install``), one string each."""
    text = text.replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(r"(?:\$\(PIP\)|pip) install ([^;&\n]*)", text)]


def requirement_files(command: str, stack: str = "cpu") -> list[Path]:
    return [REQUIREMENTS / name.replace("${STACK}", stack) for name in re.findall(r"-r requirements/(\S+)", command)]


def resolve(path: Path) -> tuple[set[str], set[str]]:
    """(requirement lines, pip option lines) of a requirements file and the files it includes."""
    requirements, options = set(), set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            more, more_options = resolve(path.parent / line[3:].strip())
            requirements |= more
            options |= more_options
        elif line.startswith("-"):
            options.add(line)
        elif line:
            requirements.add(line)
    return requirements, options


def installed(commands: list[str], stack: str = "cpu") -> dict[bool, set[str]]:
    """Requirement lines installed {with deps: ..., --no-deps: ...}, test tools left out."""
    found = {True: set(), False: set()}
    for command in commands:
        for path in requirement_files(command, stack):
            if path.name != "test.txt":
                found["--no-deps" not in command] |= resolve(path)[0]
    return found


def test_the_cpu_image_installs_what_make_install_installs():
    make = pip_installs((ROOT / "Makefile").read_text())
    cpu_branch = [c for c in pip_installs(DOCKERFILE) if "gpu" not in c]
    assert installed(cpu_branch) == installed(make)
    assert installed(make)[True] and any(r.startswith("torch==") for r in installed(make)[True])
    assert any(r.startswith("torchrec==") for r in installed(make)[False])
    assert any("--no-deps" in c and c.endswith(" .") for c in pip_installs(DOCKERFILE)), "the project itself with --no-deps"


def test_ci_requirements_name_no_unreachable_index_and_the_index_files_do():
    assert not resolve(REQUIREMENTS / "cpu.txt")[1]  # CI installs cpu.txt offline
    requirements, options = resolve(REQUIREMENTS / "cpu-index.txt")
    assert requirements == resolve(REQUIREMENTS / "cpu.txt")[0]
    assert options == {"--extra-index-url https://download.pytorch.org/whl/cpu"}
    assert any(o.startswith("--extra-index-url https://download.pytorch.org/whl/cu") for o in resolve(REQUIREMENTS / "gpu.txt")[1])


def release_line(requirements: set[str], package: str) -> str:
    (pin,) = [r for r in requirements if r.startswith(package + "==")]
    return ".".join(pin.split("==")[1].split(".")[:2])


def test_each_stack_pins_fbgemm_and_torchrec_of_one_release_line():
    for stack, fbgemm in (("cpu", "fbgemm-gpu-cpu"), ("gpu", "fbgemm-gpu")):
        base = resolve(REQUIREMENTS / f"{stack}.txt")[0]
        torchrec = resolve(REQUIREMENTS / f"torchrec-{stack}.txt")[0]
        assert release_line(base, fbgemm) == release_line(torchrec, "torchrec"), stack


def test_the_image_python_is_one_the_project_supports_and_copied_paths_exist():
    python = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", DOCKERFILE).groups()
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.match(r">=(\d+)\.(\d+)", required).groups())
    assert tuple(int(p) for p in python) >= minimum
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
