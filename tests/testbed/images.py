"""The testbed's container images, built here without a Docker engine and pushed to its registry.

No public image registry is reachable from these machines, so every image starts from a Debian base
that mmdebstrap makes from Debian's packages (python3, its venv module, CA certificates, tar).
buildah, Debian's daemonless builder, then builds the project's own Dockerfiles (operator/Dockerfile,
trial-image/Dockerfile) and the testbed's (tests/testbed/dockerfiles/: MySQL on Debian's MariaDB,
optuna-dashboard) with that base as their `BASE` build argument, and pushes each to the testbed's
registry (registry.py) over plain HTTP.

An image's tag is a hash of its inputs: the Dockerfile, every file its COPY and ADD lines name, its
build arguments (the base's reference among them) and BUILD_REVISION. `ensure` builds only what the
registry lacks, so an unchanged tree costs a few HTTP requests; a changed file rebuilds its image
from the first layer it affects (buildah's layer cache). The operator and trial images share their
first layers, torch and its CUDA libraries among them, so those gigabytes are stored and pushed once.
Every cache (buildah's storage, pip's downloads, the registry's blobs) is under layout.CACHE,
outside the clone.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import build, layout, registry

CONTAINERS = layout.CACHE / "containers"
STORAGE = CONTAINERS / "storage"  # buildah's images and layers (overlay)
TMP = CONTAINERS / "tmp"  # buildah's temporary files and its RUN --mount=type=cache folders (pip)
LOGS = CONTAINERS / "logs"  # one build log per image
RUNROOT = Path("/run/hpo-operator/containers")  # buildah's run-time state, gone at reboot as it should be
DOCKERFILES = Path(__file__).resolve().parent / "dockerfiles"
REPOSITORY_PREFIX = "hpo"
# Bump when how images are built changes in a way their inputs do not show (rebuilds every image).
BUILD_REVISION = "1"
# Files no image needs; .dockerignore at the root says the same to `docker build`.
IGNORED = ("__pycache__", "*.pyc", "*.egg-info")

# The base: Debian bookworm's minimal variant plus what every image needs. `passwd` for useradd,
# `tar` (essential) for `kubectl cp`. Documentation and translations are left out, as Debian's
# slim images do, but not the copyright files.
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd", "tar")
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)


@dataclass(frozen=True)
class Image:
    """One image built from a Dockerfile with the Debian base as BASE."""

    name: str  # its repository in the registry is hpo/<name>
    dockerfile: Path
    context: Path
    variable: str  # the environment variable that names it for tests and users (.testbed/env)

    @property
    def repository(self) -> str:
        return f"{REPOSITORY_PREFIX}/{self.name}"


ROOT = layout.ROOT
# Build order: the trial image before the operator's, which then finds the shared layers in the cache.
IMAGES = (
    Image("pause", DOCKERFILES / "pause" / "Dockerfile", DOCKERFILES / "pause", "HPO_TESTBED_PAUSE_IMAGE"),
    Image("mysql", DOCKERFILES / "mysql" / "Dockerfile", DOCKERFILES / "mysql", "HPO_MYSQL_IMAGE"),
    Image("dashboard", DOCKERFILES / "dashboard" / "Dockerfile", DOCKERFILES / "dashboard", "HPO_DASHBOARD_IMAGE"),
    Image("trial", ROOT / "trial-image" / "Dockerfile", ROOT, "HPO_TRIAL_IMAGE"),
    Image("operator", ROOT / "operator" / "Dockerfile", ROOT, "HPO_OPERATOR_IMAGE"),
)


# --- Inputs and tags (pure) ---------------------------------------------------------------------


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, one string each: continuation lines joined, comments dropped."""
    result: list[str] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        result.append(pending + line)
        pending = ""
    if pending.strip():
        result.append(pending.strip())
    return result


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths that COPY and ADD instructions name (not those copied from a stage)."""
    sources: list[str] = []
    for instruction in instructions(dockerfile):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.lstrip()
        if any(flag.startswith("--from=") for flag in flags):
            continue
        arguments = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources.extend(str(argument) for argument in arguments[:-1])
    return sources


def _ignored(path: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in IGNORED)


def context_files(context: Path, sources: list[str]) -> list[Path]:
    """Every file under the named sources, sorted, without the IGNORED ones."""
    files: set[Path] = set()
    for source in sources:
        path = context / source
        if not path.exists():
            raise FileNotFoundError(f"COPY source {source} is missing from the build context {context}")
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files.update(p for p in candidates if not _ignored(p.relative_to(context)))
    return sorted(files)


def image_tag(dockerfile: Path, context: Path, build_args: dict[str, str]) -> str:
    """A hash of what the image is built from: a different tag exactly when an input changed."""
    digest = hashlib.sha256(f"revision {BUILD_REVISION}\n".encode())
    text = dockerfile.read_text()
    digest.update(text.encode())
    for path in context_files(context, copy_sources(text)):
        executable = os.access(path, os.X_OK)
        digest.update(f"\n{path.relative_to(context)} {int(executable)}\n".encode())
        digest.update(path.read_bytes())
    for name, value in sorted(build_args.items()):
        digest.update(f"\narg {name}={value}".encode())
    return digest.hexdigest()[:16]


def mmdebstrap_arguments() -> list[str]:
    """mmdebstrap's arguments for the base (the output file is added by the caller)."""
    return [
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
        "--format=tar",
        DEBIAN_SUITE,
    ]


def base_tag() -> str:
    digest = hashlib.sha256(f"revision {BUILD_REVISION}\n".encode())
    digest.update("\n".join((*mmdebstrap_arguments(), *DEBIAN_SOURCES)).encode())
    return digest.hexdigest()[:16]


def reference(repository: str, tag: str) -> str:
    return f"{registry.ADDRESS}/{repository}:{tag}"


def base_reference() -> str:
    return reference(f"{REPOSITORY_PREFIX}/base", base_tag())


def image_reference(image: Image) -> str:
    return reference(image.repository, image_tag(image.dockerfile, image.context, {"BASE": base_reference()}))


def references() -> dict[str, str]:
    """Each image's environment variable and registry reference (repository:tag), built or not."""
    return {image.variable: image_reference(image) for image in IMAGES}


# --- buildah -------------------------------------------------------------------------------------


def buildah_argv(*arguments: str) -> list[str]:
    """buildah with the project's own storage, outside the clone and apart from the machine's."""
    return ["buildah", f"--root={STORAGE}", f"--runroot={RUNROOT}", "--storage-driver=overlay", *arguments]


def _buildah_env() -> dict[str, str]:
    for folder in (STORAGE, TMP, LOGS, RUNROOT):
        folder.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(TMP), "BUILDAH_LAYERS": "true"}


def buildah(*arguments: str) -> str:
    """Run a short buildah command and return its output."""
    result = subprocess.run(buildah_argv(*arguments), env=_buildah_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {arguments[0]} failed: {result.stderr.strip()}")
    return result.stdout


def local_images() -> set[str]:
    """The references (name:tag) in buildah's storage."""
    listing = buildah("images", "--format", "{{.Name}}:{{.Tag}}")
    return set(listing.split())


def _run_logged(argv: list[str], log: Path, label: str, shown: Callable[[str], bool], cwd: Path | None = None) -> None:
    """Run ``argv`` with its output in ``log``; print the lines ``shown`` selects and, every 30 s of
    silence, how long it has run, so a long pip download does not look like a hang."""
    started = last = time.monotonic()
    tail: list[str] = []
    with (
        open(log, "w") as out,
        subprocess.Popen(
            argv,
            cwd=cwd,
            env=_buildah_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            tail = [*tail[-19:], line]
            if shown(line):
                print(f"  {label}: {line.strip()[:150]}", flush=True)
                last = time.monotonic()
            elif time.monotonic() - last > 30:
                last = time.monotonic()
                print(f"  {label}: {last - started:.0f}s, {line.strip()[:110]}", flush=True)
    if process.returncode != 0:
        sys.stderr.writelines(tail)
        raise RuntimeError(f"{label} failed (exit {process.returncode}); the whole output is in {log}")


def _step(line: str) -> bool:
    return line.startswith("STEP ")


def build_base(ref: str) -> None:
    """mmdebstrap a Debian rootfs into a tarball and make it a one-layer image."""
    TMP.mkdir(parents=True, exist_ok=True)
    tarball = TMP / "base-rootfs.tar"
    argv = ["mmdebstrap", *mmdebstrap_arguments(), str(tarball), *DEBIAN_SOURCES]
    try:
        _run_logged(argv, LOGS / "base.log", "base", lambda line: line.startswith("I: ") and "..." in line)
        container = buildah("from", "scratch").strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah(
                "config",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "python3",
                "--created-by",
                f"mmdebstrap {shlex.join(mmdebstrap_arguments())}",
                container,
            )
            buildah("commit", "--quiet", container, ref)
        finally:
            buildah("rm", container)
    finally:
        tarball.unlink(missing_ok=True)


def build_image(image: Image, ref: str, base: str) -> None:
    """buildah bud the image's Dockerfile with BASE, on the host's network, with the host's CA bundle.

    The CA bundle is bind-mounted over the image's own during RUN steps only (it is in no layer): pip
    in a venv from Debian's python3 trusts the system bundle, and sites reach PyPI through their CA.
    """
    argv = buildah_argv(
        "bud",
        "--layers",
        "--network=host",
        "--tls-verify=false",
        "--format=oci",
        f"--build-arg=BASE={base}",
        f"--file={image.dockerfile}",
        f"--tag={ref}",
        "--volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
        str(image.context),
    )
    _run_logged(argv, LOGS / f"{image.name}.log", image.name, _step)


def push(ref: str, label: str) -> None:
    argv = buildah_argv("push", "--tls-verify=false", ref, f"docker://{ref}")
    _run_logged(argv, LOGS / f"{label}-push.log", f"{label} push", lambda line: False)


def _ensure(label: str, ref: str, make: Callable[[], None]) -> None:
    """Make ``ref`` available in the registry: already there, pushed from storage, or built and pushed."""
    repository, tag = ref.removeprefix(f"{registry.ADDRESS}/").rsplit(":", 1)
    if registry.has_manifest(repository, tag):
        print(f"{label}: {ref} is up to date", flush=True)
        return
    started = time.monotonic()
    if ref not in local_images():
        print(f"{label}: building {ref}", flush=True)
        make()
        print(f"{label}: built in {time.monotonic() - started:.0f}s", flush=True)
    pushed = time.monotonic()
    push(ref, label)
    print(f"{label}: pushed in {time.monotonic() - pushed:.0f}s", flush=True)


def ensure() -> dict[str, str]:
    """Build and push whatever image is missing or stale; return variable -> reference."""
    started = time.monotonic()
    binary = build.build_all(["registry"])["registry"]
    with registry.running(binary):
        refs = {image.variable: ensure_one(image) for image in IMAGES}
    print(f"images ready in {time.monotonic() - started:.0f}s", flush=True)
    return refs


def ensure_one(image: Image) -> str:
    """Build and push ``image`` (and the base) if the registry, which must answer, lacks it; its reference."""
    base = base_reference()
    _ensure("base", base, functools.partial(build_base, base))
    ref = image_reference(image)
    _ensure(image.name, ref, functools.partial(build_image, image, ref, base))
    return ref


def pulled(ref: str) -> None:
    """Make sure ``ref`` is in buildah's storage (pulled from the registry if needed)."""
    if ref not in local_images():
        buildah("pull", "--quiet", "--tls-verify=false", ref)


def _diff_ids(image: str) -> list[str]:
    inspected = json.loads(buildah("inspect", "--type=image", image))
    return list(inspected["OCIv1"]["rootfs"]["diff_ids"])


def stale_images(images: dict[str, list[str]], current: list[list[str]]) -> list[str]:
    """The images (id -> layer diff ids) that no current image needs: neither a current image nor a
    step of its build (buildah's layer cache keeps one image per step, whose layers are a prefix of
    the final image's). What remains after removing them is exactly the cache of current builds."""
    return sorted(
        image for image, layers in images.items() if not any(chain[: len(layers)] == layers for chain in current)
    )


def prune() -> None:
    """Free what older builds left: local images and layer cache no current image needs, then the
    registry's older tags and the blobs only they used. Unchanged images keep their layer cache."""
    current = {base_reference(), *references().values()}
    local = local_images()
    chains = [_diff_ids(ref) for ref in current if ref in local]
    every = [image.removeprefix("sha256:") for image in buildah("images", "--all", "--quiet", "--no-trunc").split()]
    stale = stale_images({image: _diff_ids(image) for image in every}, chains)
    for image in stale:
        if image in buildah("images", "--all", "--quiet", "--no-trunc"):  # removing a child removes its
            buildah("rmi", image)  # dangling parents with it
    binary = build.build_all(["registry"])["registry"]
    with registry.running(binary):
        for ref in current:
            repository, tag = ref.removeprefix(f"{registry.ADDRESS}/").rsplit(":", 1)
            for deleted in registry.delete_other_tags(repository, tag):
                print(f"deleted {repository}:{deleted} from the registry", flush=True)
    if not registry.answers():
        registry.garbage_collect(binary)
    print(f"removed {len(stale)} local images no current build needs; {disk_usage()}", flush=True)


def _size(path: Path) -> int:
    if not path.exists():
        return 0
    result = subprocess.run(["du", "-sbx", str(path)], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[0])


def disk_usage() -> str:
    """One line: what buildah's storage, its temporary files (pip's cache) and the registry take."""
    parts = {"buildah storage": STORAGE, "pip cache": TMP, "registry": registry.DATA}
    return ", ".join(f"{name} {_size(path) / 2**30:.1f} GiB" for name, path in parts.items())


def image_config(ref: str) -> dict[str, Any]:
    """The OCI image configuration's `config` object (Env, User, WorkingDir, Entrypoint, Cmd)."""
    pulled(ref)
    inspected = json.loads(buildah("inspect", "--type=image", ref))
    return dict(inspected["OCIv1"]["config"])


@contextlib.contextmanager
def mounted_rootfs(ref: str) -> Iterator[Path]:
    """Yield the image's root filesystem, mounted read-write by buildah (a throw-away container)."""
    pulled(ref)
    container = buildah("from", "--pull-never", ref).strip()
    try:
        yield Path(buildah("mount", container).strip())
    finally:
        buildah("umount", container)
        buildah("rm", container)
