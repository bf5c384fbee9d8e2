"""Fixtures for every test tier: the running testbed's API, a namespace per test, kubectl, MariaDB.

The testbed must be up (`make testbed-up`, which `make test` runs first). A missing testbed is a
failure with the command that fixes it, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / ".testbed"


def _testbed_env() -> dict[str, str]:
    """The variables `.testbed/env` exports, parsed without a shell."""
    env_file = TESTBED / "env"
    if not env_file.exists():
        pytest.fail("the testbed is not running: start it with `make testbed-up` (make test does this)")
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = os.path.expandvars(value.strip("'\""))
    return values


@pytest.fixture(scope="session")
def testbed_env() -> dict[str, str]:
    return _testbed_env()


@pytest.fixture(scope="session")
def kube(testbed_env: dict[str, str]) -> client.ApiClient:
    """A cluster-admin API client for the testbed."""
    return config.new_client_from_config(config_file=testbed_env["KUBECONFIG"])


KubectlRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def kubectl(testbed_env: dict[str, str]) -> KubectlRunner:
    """Run the testbed's own kubectl (not whatever is on the machine's PATH)."""
    env = {**os.environ, "KUBECONFIG": testbed_env["KUBECONFIG"], "PATH": testbed_env["PATH"]}

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["kubectl", *args], input=input, env=env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    return run


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, ready for pods (default ServiceAccount and root CA present), deleted after."""
    core = client.CoreV1Api(kube)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def ready() -> bool:
        accounts = core.list_namespaced_service_account(name, field_selector="metadata.name=default").items
        roots = core.list_namespaced_config_map(name, field_selector="metadata.name=kube-root-ca.crt").items
        return bool(accounts and roots)

    wait_for(ready, 30, f"namespace {name} to get its default ServiceAccount and kube-root-ca.crt")
    yield name
    core.delete_namespace(name)
