"""Pod volumes made real on the host, for container_init to bind-mount at each volumeMount.

Per-pod volumes (emptyDir, secret, configMap, downwardAPI, projected, including the ServiceAccount
token volume the API server adds to every pod) live under the pod's state directory and go with the
pod. Persistent ones (a PVC's hostPath PV, a hostPath) are host directories that outlive it, so
that a checkpoint written by one pod is there for its successor.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.node_agent.downward import DownwardError, field_value, resource_value
from tests.testbed.node_agent.kube import Kube, object_data
from tests.testbed.node_agent.settings import AgentSettings

log = logging.getLogger(__name__)

Json = dict[str, Any]
Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)

DEFAULT_MODE = 0o644
DEFAULT_TOKEN_SECONDS = 3600
TOKEN_REFRESH_FRACTION = 0.8
READ_ONLY_KINDS = ("secret", "configMap", "downwardAPI", "projected")


class VolumeNotReady(Exception):
    """A volume cannot be set up yet (claim not bound, object missing); the pod waits and retries."""


@dataclass
class _Token:
    """A projected ServiceAccount token file and when to replace it."""

    directory: Path
    source: Json
    mode: int
    refresh_at: float


def write_files(directory: Path, files: Files) -> None:
    """Write each file atomically (a reader never sees half a token)."""
    for relative, (content, mode) in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(content)
        temporary.chmod(mode)
        os.replace(temporary, target)


def key_files(data: dict[str, bytes], items: list[Json] | None, mode: int, what: str) -> Files:
    """A Secret's or ConfigMap's keys as files: all of them, or the listed `items` (key -> path, mode)."""
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files: Files = {}
    for item in items:
        if item["key"] not in data:
            raise VolumeNotReady(f"{what} has no key {item['key']!r}")
        files[item["path"]] = (data[item["key"]], item.get("mode", mode))
    return files


class PodVolumes:
    """The volumes of one pod: set up before its containers start, torn down when it is deleted."""

    def __init__(self, kube: Kube, settings: AgentSettings, pod: Json, pod_dir: Path) -> None:
        self._kube = kube
        self._settings = settings
        self._pod = pod
        self._namespace = pod["metadata"]["namespace"]
        self._root = pod_dir / "volumes"
        self._tokens: list[_Token] = []
        self.read_only: set[str] = set()

    def prepare(self) -> dict[str, Path]:
        """Every volume's host path; raises VolumeNotReady while one cannot be set up yet."""
        self._tokens = []
        paths = {}
        for volume in self._pod["spec"].get("volumes") or []:
            paths[volume["name"]] = self._materialize(volume)
            if any(kind in volume for kind in READ_ONLY_KINDS) or self._claim_read_only(volume):
                self.read_only.add(volume["name"])
        return paths

    def refresh_tokens(self) -> None:
        """Replace ServiceAccount tokens that are 80% through their life, as the kubelet does."""
        for token in self._tokens:
            if time.time() >= token.refresh_at:
                write_files(token.directory, self._token_files(token))
                log.info("pod %s/%s: refreshed its ServiceAccount token", self._namespace, self._pod_name)

    def remove(self) -> None:
        """Delete the pod's own volumes; PVC and hostPath data are host directories and stay."""
        shutil.rmtree(self._root, ignore_errors=True)

    @property
    def _pod_name(self) -> str:
        return str(self._pod["metadata"]["name"])

    @staticmethod
    def _claim_read_only(volume: Json) -> bool:
        return bool((volume.get("persistentVolumeClaim") or {}).get("readOnly"))

    def _materialize(self, volume: Json) -> Path:
        name: str = volume["name"]
        if "hostPath" in volume:
            return self._host_path(volume["hostPath"])
        if "persistentVolumeClaim" in volume:
            return self._claim(volume["persistentVolumeClaim"]["claimName"])
        if "ephemeral" in volume:
            return self._claim(f"{self._pod_name}-{name}")
        directory = self._root / name
        directory.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return directory
        files = self._rendered(volume)
        if files is None:
            raise VolumeNotReady(f"volume {name!r}: unsupported volume type {sorted(set(volume) - {'name'})}")
        write_files(directory, files)
        return directory

    def _rendered(self, volume: Json) -> Files | None:
        """The files of a secret, configMap, downwardAPI or projected volume."""
        directory = self._root / volume["name"]
        if "secret" in volume:
            source = volume["secret"]
            return self._object_files("Secret", source.get("secretName", ""), source, source.get("defaultMode"))
        if "configMap" in volume:
            source = volume["configMap"]
            return self._object_files("ConfigMap", source.get("name", ""), source, source.get("defaultMode"))
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            return self._downward_files(source.get("items") or [], source.get("defaultMode", DEFAULT_MODE))
        if "projected" in volume:
            return self._projected_files(directory, volume["projected"])
        return None

    def _object_files(self, kind: str, name: str, source: Json, default_mode: int | None) -> Files:
        found = (self._kube.get_secret if kind == "Secret" else self._kube.get_config_map)(self._namespace, name)
        what = f'{kind.lower()} "{name}"'
        if found is None:
            if source.get("optional"):
                return {}
            raise VolumeNotReady(f"{what} not found")
        return key_files(object_data(found), source.get("items"), default_mode or DEFAULT_MODE, what)

    def _downward_files(self, items: list[Json], mode: int) -> Files:
        files: Files = {}
        containers = {c["name"]: c for c in self._pod["spec"].get("containers", [])}
        for item in items:
            try:
                if "fieldRef" in item:
                    value = field_value(self._pod, item["fieldRef"]["fieldPath"], self._settings.host_ip)
                else:
                    ref = item["resourceFieldRef"]
                    container = containers.get(ref.get("containerName", ""), {})
                    value = resource_value(container, ref["resource"], ref.get("divisor"), self._settings.allocatable)
            except DownwardError as error:
                raise VolumeNotReady(str(error)) from error
            files[item["path"]] = (value.encode(), item.get("mode", mode))
        return files

    def _projected_files(self, directory: Path, projected: Json) -> Files:
        mode = projected.get("defaultMode", DEFAULT_MODE)
        files: Files = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token = _Token(directory, source["serviceAccountToken"], mode, 0.0)
                files.update(self._token_files(token))
                self._tokens.append(token)
            elif "secret" in source:
                secret = source["secret"]
                files.update(self._object_files("Secret", secret.get("name", ""), secret, mode))
            elif "configMap" in source:
                config_map = source["configMap"]
                files.update(self._object_files("ConfigMap", config_map.get("name", ""), config_map, mode))
            elif "downwardAPI" in source:
                files.update(self._downward_files(source["downwardAPI"].get("items") or [], mode))
            else:
                raise VolumeNotReady(f"unsupported projected volume source {sorted(source)}")
        return files

    def _token_files(self, token: _Token) -> Files:
        """Request a token bound to this pod and schedule its refresh."""
        lifetime = int(token.source.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
        status = self._kube.request_token(self._pod, token.source.get("audience"), lifetime)
        token.refresh_at = time.time() + lifetime * TOKEN_REFRESH_FRACTION
        return {token.source.get("path", "token"): (status["token"].encode(), token.mode)}

    def _claim(self, claim_name: str) -> Path:
        claim = self._kube.get_pvc(self._namespace, claim_name)
        if claim is None:
            raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        volume = self._kube.get_pv(volume_name)
        source = ((volume or {}).get("spec") or {}).get("hostPath") or ((volume or {}).get("spec") or {}).get("local")
        if not source:
            raise VolumeNotReady(f'persistentvolume "{volume_name}" has no hostPath: the testbed cannot mount it')
        path = Path(source["path"])
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _host_path(source: Json) -> Path:
        path, kind = Path(source["path"]), source.get("type", "")
        if kind in ("", "DirectoryOrCreate"):
            if not path.exists():
                path.mkdir(parents=True, mode=0o755)
        elif kind == "FileOrCreate":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o644, exist_ok=True)
        elif kind == "Directory" and not path.is_dir():
            raise VolumeNotReady(f"hostPath {path} is not a directory")
        elif not path.exists():
            raise VolumeNotReady(f"hostPath {path} does not exist")
        return path
