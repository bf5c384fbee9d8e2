"""The testbed's image builds: what a tag depends on, the layers the operator and trial images share,
and the runtime configuration the image checks run under (tests/testbed/images.py, image_checks.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.testbed import image_checks, images

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SHARED_END = "# --- End of the shared layers."


def test_instructions_join_continuations_and_drop_comments() -> None:
    dockerfile = "# syntax=docker/dockerfile:1\nARG BASE=x\nFROM ${BASE}\n\nRUN a \\\n    # why\n    && b\nUSER 1:1\n"
    assert images.instructions(dockerfile) == ["ARG BASE=x", "FROM ${BASE}", "RUN a && b", "USER 1:1"]


def test_copy_sources_are_the_context_paths_of_copy_and_add_but_not_of_other_stages() -> None:
    dockerfile = (
        'FROM x AS build\nCOPY --chown=1:1 a.txt src/ /opt/\nADD ["b c.txt", "/d"]\n'
        "COPY --from=build /opt /opt\nRUN cp a b\n"
    )
    assert images.copy_sources(dockerfile) == ["a.txt", "src/", "b c.txt"]


def test_the_tag_follows_the_copied_files_and_build_arguments_only(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print(1)\n")
    (tmp_path / "README.md").write_text("not copied\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE\nFROM ${BASE}\nCOPY src /opt/src\n")
    tag = images.image_tag(dockerfile, tmp_path, {"BASE": "base:1"})

    (tmp_path / "README.md").write_text("edited, still not copied\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert images.image_tag(dockerfile, tmp_path, {"BASE": "base:1"}) == tag

    assert images.image_tag(dockerfile, tmp_path, {"BASE": "base:2"}) != tag
    (tmp_path / "src" / "app.py").write_text("print(2)\n")
    assert images.image_tag(dockerfile, tmp_path, {"BASE": "base:1"}) != tag


def test_a_missing_copy_source_is_an_error_not_an_empty_input(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x\nCOPY gone.txt /\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.txt"):
        images.image_tag(dockerfile, tmp_path, {})


def test_the_operator_and_trial_images_share_their_first_layers() -> None:
    shared = []
    for path in (ROOT / "operator" / "Dockerfile", ROOT / "trial-image" / "Dockerfile"):
        text = path.read_text()
        assert SHARED_END in text, f"{path} lost its end-of-shared-layers marker"
        shared.append(images.instructions(text.split(SHARED_END)[0]))
    assert shared[0] == shared[1]
    assert any("pip install -r /opt/requirements/trial.txt" in line for line in shared[0])


@pytest.mark.parametrize("dockerfile", ["operator/Dockerfile", "trial-image/Dockerfile"])
def test_a_plain_docker_build_defaults_to_the_official_python_image(dockerfile: str) -> None:
    lines = images.instructions((ROOT / dockerfile).read_text())
    assert lines[:2] == ["ARG BASE=python:3.11.14-slim-bookworm", "FROM ${BASE}"]


def test_the_dockerignore_keeps_what_the_root_dockerfiles_copy_and_drops_the_ignored_files() -> None:
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in rules, "the context is the repository root: exclude everything else"
    for dockerfile in ("operator/Dockerfile", "trial-image/Dockerfile"):
        for source in images.copy_sources((ROOT / dockerfile).read_text()):
            assert f"!{source.rstrip('/')}" in {rule.rstrip("/") for rule in rules}, f"{source} is excluded"
    for pattern in images.IGNORED:
        assert f"**/{pattern}" in rules


def test_pruning_keeps_current_images_and_every_step_of_their_builds() -> None:
    local = {
        "trial": ["base", "venv", "torch", "trial"],
        "trial-step-venv": ["base", "venv"],
        "trial-step-env": ["base"],
        "old-trial": ["base", "venv", "old-torch", "trial"],
        "old-step-torch": ["base", "venv", "old-torch"],
        "mysql-old": ["base", "mariadb-old"],
    }
    current = [local["trial"], ["base", "mariadb"]]
    assert images.stale_images(local, current) == ["mysql-old", "old-step-torch", "old-trial"]


def _config(user: str, binds: list[tuple[Path, str]] | None = None, host_network: bool = False) -> dict[str, Any]:
    template = {
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"]},
        },
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]},
    }
    image_config = {"User": user, "Env": ["PATH=/opt/venv/bin:/usr/bin"], "WorkingDir": "/home/hpo"}
    return image_checks.runtime_config(
        template, Path("/rootfs"), ["hpo-trial", "--help"], image_config, [("A", "1")], binds or [], host_network
    )


def test_checks_run_as_the_images_user_on_a_read_only_root_without_capabilities() -> None:
    config = _config("10001:10001", binds=[(Path("/scratch/v0"), "/var/lib/mysql")])
    process = config["process"]
    assert process == {
        "terminal": False,
        "user": {"uid": 10001, "gid": 10001},
        "args": ["hpo-trial", "--help"],
        "env": ["PATH=/opt/venv/bin:/usr/bin", "A=1"],
        "cwd": "/home/hpo",
        "capabilities": {},
        "noNewPrivileges": True,
    }
    assert config["root"] == {"path": "/rootfs", "readonly": True}
    mounts = {mount["destination"]: mount for mount in config["mounts"]}
    assert mounts["/tmp"]["type"] == "tmpfs"
    assert mounts["/var/lib/mysql"]["source"] == "/scratch/v0"
    assert {"type": "network"} in config["linux"]["namespaces"]
    assert {"type": "network"} not in _config("1:1", host_network=True)["linux"]["namespaces"]


@pytest.mark.parametrize("user", ["", "root", "0", "0:0", "hpo", "10001:hpo"])
def test_an_image_without_a_numeric_non_root_user_fails_its_check(user: str) -> None:
    with pytest.raises(ValueError, match="numeric, non-root"):
        _config(user)
