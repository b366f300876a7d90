"""The operator image's Dockerfile, read statically (no Docker engine here): the base image and
torch build, the user the Deployment expects, the entrypoint, and a build context that holds
everything the package build reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_base_image_and_cpu_torch():
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    makefile_pin = re.search(r"torch==[\d.]+", (ROOT / "Makefile").read_text())[0]
    (torch,) = [args for op, args in steps if op == "RUN" and "torch==" in args]
    assert f"--index-url https://download.pytorch.org/whl/cpu {makefile_pin}" in torch
    # torch comes before the package, so its `torch>=2.4` finds it installed.
    runs = [args for op, args in steps if op == "RUN"]
    assert runs.index(torch) < runs.index(next(r for r in runs if "pip install ." in r))


def test_runs_as_the_deployments_user(deployment):
    steps = dict(instructions())
    assert steps["USER"] == "65532:65532"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert steps["ENTRYPOINT"] == '["metapolicy", "run"]'


def test_entrypoint_is_the_packages_console_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["metapolicy"] == "metapolicy_operator.cli:main"


def test_context_holds_what_the_build_reads():
    copied = {
        source.rstrip("/")
        for op, args in instructions()
        if op == "COPY"
        for source in args.split()[:-1]
    }
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed, f"copied but kept out of the context: {copied - allowed}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {path.split("/")[0] for path in project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"the package build needs {needed - copied}"


def test_the_package_lists_every_subpackage_and_ships_the_crd():
    """A non-editable install (the image) gets only what pyproject names: a package missing
    there works in development and fails in the cluster."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found == set(setuptools["packages"])
    crd = ROOT / "operator" / "metapolicy_operator" / "crd" / "metapolicy.yaml"
    assert crd.resolve() == (ROOT / "crds" / "metapolicy.yaml").resolve()
    assert setuptools["package-data"]["metapolicy_operator"] == ["crd/*.yaml"]
