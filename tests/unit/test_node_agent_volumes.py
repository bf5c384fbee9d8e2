"""Node agent: volumes rendered on the host from the API objects a pod references."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, cast

import pytest

from tests.testbed.node_agent.kube import Kube
from tests.testbed.node_agent.settings import parse_args
from tests.testbed.node_agent.volumes import PodVolumes, VolumeNotReady

pytestmark = pytest.mark.unit

Json = dict[str, Any]


class FakeKube:
    """The few reads PodVolumes makes, from memory; records token requests."""

    def __init__(self) -> None:
        self.secrets: dict[str, Json] = {}
        self.config_maps: dict[str, Json] = {}
        self.claims: dict[str, Json] = {}
        self.volumes: dict[str, Json] = {}
        self.token_requests: list[tuple[str | None, int]] = []

    def get_secret(self, namespace: str, name: str) -> Json | None:
        return self.secrets.get(name)

    def get_config_map(self, namespace: str, name: str) -> Json | None:
        return self.config_maps.get(name)

    def get_pvc(self, namespace: str, name: str) -> Json | None:
        return self.claims.get(name)

    def get_pv(self, name: str) -> Json | None:
        return self.volumes.get(name)

    def request_token(self, pod: Json, audience: str | None, expiration_s: int) -> Json:
        self.token_requests.append((audience, expiration_s))
        return {"token": f"token-{len(self.token_requests)}"}


def pod(volumes: list[Json]) -> Json:
    return {"metadata": {"name": "p", "namespace": "team", "uid": "u", "labels": {"a": "b"}},
            "spec": {"volumes": volumes, "containers": [{"name": "main"}]}}


def render(kube: FakeKube, tmp_path: Path, volumes: list[Json]) -> tuple[PodVolumes, dict[str, Path]]:
    settings = parse_args(["--state-dir", str(tmp_path / "state")])
    pod_volumes = PodVolumes(cast(Kube, kube), settings, pod(volumes), tmp_path / "pod")
    return pod_volumes, pod_volumes.prepare()


def test_the_service_account_volume_is_projected_with_a_bound_token(tmp_path: Path) -> None:
    kube = FakeKube()
    kube.config_maps["kube-root-ca.crt"] = {"kind": "ConfigMap", "data": {"ca.crt": "CA"}}
    access = {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    volumes, paths = render(kube, tmp_path, [access])
    directory = paths["kube-api-access"]
    assert {f.name: f.read_text() for f in directory.iterdir()} == {"token": "token-1", "ca.crt": "CA",
                                                                    "namespace": "team"}
    assert (directory / "token").stat().st_mode & 0o777 == 0o644
    assert kube.token_requests == [(None, 3607)]
    assert "kube-api-access" in volumes.read_only
    volumes.refresh_tokens()
    assert len(kube.token_requests) == 1, "a fresh token is not refreshed"


def test_a_token_is_replaced_when_80_percent_of_its_life_has_passed(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    token = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 1000,
                                                                             "audience": "vault", "path": "jwt"}}]}}
    volumes, paths = render(kube, tmp_path, [token])
    began = time.time()
    monkeypatch.setattr(time, "time", lambda: began + 790)
    volumes.refresh_tokens()
    assert (paths["t"] / "jwt").read_text() == "token-1"
    monkeypatch.setattr(time, "time", lambda: began + 810)
    volumes.refresh_tokens()
    assert (paths["t"] / "jwt").read_text() == "token-2"
    assert kube.token_requests == [("vault", 1000), ("vault", 1000)]


def test_the_kube_root_ca_is_awaited(tmp_path: Path) -> None:
    volume = {"name": "v", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}
    with pytest.raises(VolumeNotReady, match=r"kube-root-ca\.crt"):
        render(FakeKube(), tmp_path, [volume])


def test_secret_items_modes_and_optional_objects(tmp_path: Path) -> None:
    kube = FakeKube()
    encoded = base64.b64encode(b"t0ken").decode()
    kube.secrets["creds"] = {"kind": "Secret", "data": {"token": encoded, "other": encoded}}
    volumes = [
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                                     "items": [{"key": "token", "path": "auth/token"},
                                               {"key": "other", "path": "other", "mode": 0o600}]}},
        {"name": "maybe", "configMap": {"name": "absent", "optional": True}},
    ]
    _, paths = render(kube, tmp_path, volumes)
    assert (paths["creds"] / "auth" / "token").read_bytes() == b"t0ken"
    assert (paths["creds"] / "auth" / "token").stat().st_mode & 0o777 == 0o400
    assert (paths["creds"] / "other").stat().st_mode & 0o777 == 0o600
    assert list(paths["maybe"].iterdir()) == []


def test_a_missing_key_keeps_the_pod_waiting(tmp_path: Path) -> None:
    kube = FakeKube()
    kube.config_maps["cfg"] = {"kind": "ConfigMap", "data": {"a": "1"}}
    with pytest.raises(VolumeNotReady, match="no key 'b'"):
        render(kube, tmp_path, [{"name": "c", "configMap": {"name": "cfg", "items": [{"key": "b", "path": "b"}]}}])


def test_a_claim_is_its_bound_volumes_host_path_and_outlives_the_pod(tmp_path: Path) -> None:
    kube = FakeKube()
    host = tmp_path / "hostpath_pv" / "pvc-1"
    kube.claims["ckpt"] = {"spec": {}, "status": {"phase": "Pending"}}
    claim_volume = [{"name": "data", "persistentVolumeClaim": {"claimName": "ckpt"}}]
    with pytest.raises(VolumeNotReady, match="not bound"):
        render(kube, tmp_path, claim_volume)
    kube.claims["ckpt"] = {"spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}}
    kube.volumes["pv-1"] = {"spec": {"hostPath": {"path": str(host)}}}
    volumes, paths = render(kube, tmp_path, [*claim_volume, {"name": "scratch", "emptyDir": {}}])
    assert paths["data"] == host and host.is_dir()
    (host / "checkpoint").write_text("epoch 3")
    (paths["scratch"] / "tmp").write_text("x")
    volumes.remove()
    assert (host / "checkpoint").read_text() == "epoch 3" and not paths["scratch"].exists()


def test_host_paths_follow_their_type(tmp_path: Path) -> None:
    created = tmp_path / "made" / "here"
    _, paths = render(FakeKube(), tmp_path, [{"name": "h", "hostPath": {"path": str(created),
                                                                       "type": "DirectoryOrCreate"}}])
    assert paths["h"] == created and created.is_dir()
    with pytest.raises(VolumeNotReady, match="not a directory"):
        render(FakeKube(), tmp_path, [{"name": "h", "hostPath": {"path": str(tmp_path / "x"), "type": "Directory"}}])
