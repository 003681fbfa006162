"""How the emulator writes objects: create, patch, replace, delete, as a kube-apiserver does.

A mixin of RealisticEmulator (emulator.py), which calls `_write` for POST/PATCH/DELETE before a test's
reactions and `_update` for PUT (a fallback). Every write: the request's checks (409 AlreadyExists or
Conflict on a stale resourceVersion, 404, 400/422), the object rules of emulator_crd.py (generation, status
subresource), the CRD's pruning, defaults and validation when one is installed (crd_validation.py), then a
new resourceVersion and the change recorded in the History that lists and watches serve (emulator_watch.py).
A write that changes nothing stores nothing (same resourceVersion, no event), as the apiserver does.
Runs on the emulator's event loop, under its lock.
"""

from __future__ import annotations

import copy
import datetime
import random
import uuid
from collections.abc import Mapping
from typing import Any

import kmock
from kmock._internal import enums, k8s, k8s_views, references, rendering

from tests.k8s import emulator_crd as objs
from tests.k8s.crd_validation import CrdVersion, crd_versions
from tests.k8s.emulator_watch import History, Key, api_error

_GENERATED = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectWrites:
    """The write semantics; the emulator provides the store (`_objects`), `resources`, `history` and `crds`."""

    _objects: k8s_views.ObjectsArray
    resources: k8s_views.ResourcesArray
    history: History
    crds: dict[references.resource, CrdVersion]

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CustomResourceDefinition's kind and validate its objects (call on the loop: KubeHarness)."""
        versions = crd_versions(crd)  # raises for a CEL rule that does not compile, as the apiserver refuses it
        for resource, info in objs.crd_resource_infos(crd).items():
            self.resources[resource] = info
        for version in versions:
            self.crds[kmock.resource(version.group, version.name, version.plural)] = version
        key: Key = (kmock.resource(objs.CRD_RESOURCE), None, crd["metadata"]["name"])
        if self._live(key) is None:
            stored = objs.established(crd, now())
            stored["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            self.history.record(key, "ADDED", stored, None)
            self._store(key, stored)

    def _has_status(self, resource: references.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _live(self, key: Key) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _store(self, key: Key, obj: dict[str, Any]) -> None:
        if key in self._objects:
            self._objects[key].create(obj)  # a new full version: replace, not merge
        else:
            self._objects[key] = obj

    def _write(self, request: rendering.Request) -> dict[str, Any]:
        if request.action == enums.action.CREATE:
            return self._create(request)
        key: Key = (request.resource, request.namespace, request.name or "")
        stored = self._live(key)
        if stored is None:
            raise self._not_found(request)
        if request.action == enums.action.DELETE:
            return self._delete(request, key, stored)
        group = str(request.resource.group if request.resource is not None else "")
        custom = "." in group and not group.endswith("k8s.io")
        new = objs.apply_patch(stored, request.data, request.headers.get("Content-Type", ""), custom)
        if (new.get("metadata") or {}).get("resourceVersion") != stored["metadata"].get("resourceVersion"):
            raise self._conflict(request)  # a resourceVersion in the patch is a precondition
        return self._update(request, key, stored, new)

    def _create(self, request: rendering.Request) -> dict[str, Any]:
        if not isinstance(request.data, dict) or not isinstance(request.data.get("metadata", {}), dict):
            raise api_error(400, "BadRequest", "the body of the request was in an unknown format")
        body = copy.deepcopy(request.data)
        meta = body.setdefault("metadata", {})
        if request.namespace is not None and meta.setdefault("namespace", request.namespace) != request.namespace:
            raise api_error(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                            "sent on the request")  # fmt: skip
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(random.choices(_GENERATED, k=5))
        if not meta.get("name"):
            raise api_error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        key: Key = (request.resource, request.namespace or meta.get("namespace"), meta["name"])
        if self._live(key) is not None:
            name = objs.resource_name(request.resource)
            details = {"name": meta["name"], "group": request.resource.group, "kind": request.resource.plural}
            raise api_error(409, "AlreadyExists", f'{name} "{meta["name"]}" already exists', details)
        objs.prepare_create(body, self._has_status(request.resource))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        crd = self.crds.get(request.resource)
        if crd is not None:
            self._strict(request, crd.admit(body))
            self._refuse_invalid(crd, body, None)
        if request.resource == kmock.resource(objs.CRD_RESOURCE):
            try:
                self.install_crd(body)
            except Exception as exc:  # e.g. a CEL rule that does not compile
                raise api_error(422, "Invalid", f'CustomResourceDefinition "{meta["name"]}" is invalid: {exc}') from exc
            return self._live(key) or body
        self.history.record(key, "ADDED", body, None)
        self._store(key, body)
        return body
    def _update(
        self, request: rendering.Request, key: Key, stored: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        resource = key[0]
        crd = self.crds.get(resource)
        if crd is not None:
            self._strict(request, crd.admit(new))  # the patched or replacing body is decoded: pruned, defaulted
        result = objs.prepare_update(stored, new, self._has_status(resource), request.subresource)
        if crd is not None:
            self._refuse_invalid(crd, result, stored)
        if objs.unchanged(stored, result):
            return stored  # nothing to write: same resourceVersion, no event
        meta = result["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.history.record(key, "DELETED", result, stored)  # the last finalizer is gone: deleted now
            self._store(key, result)
            self._objects[key].delete()
            return result
        self.history.record(key, "MODIFIED", result, stored)
        self._store(key, result)
        return result

    def _delete(self, request: rendering.Request, key: Key, stored: dict[str, Any]) -> dict[str, Any]:
        meta = stored["metadata"]
        preconditions = request.data.get("preconditions") if isinstance(request.data, dict) else None
        for field in ("resourceVersion", "uid"):
            wanted = (preconditions or {}).get(field)
            if wanted is not None and wanted != meta.get(field):
                raise api_error(409, "Conflict", f"Precondition failed: {field} in precondition: {wanted}, "
                                f"{field} in object meta: {meta.get(field)}")  # fmt: skip
        if meta.get("deletionTimestamp"):
            return stored
        if meta.get("finalizers"):
            marked = copy.deepcopy(stored)
            marked["metadata"].update(deletionTimestamp=now(), generation=int(meta.get("generation") or 1) + 1)
            self.history.record(key, "MODIFIED", marked, stored)
            self._store(key, marked)
            return marked
        last = copy.deepcopy(stored)
        self.history.record(key, "DELETED", last, stored)
        self._objects[key].delete()
        return last

    def _strict(self, request: rendering.Request, unknown: list[str]) -> None:
        if unknown and request.params.get("fieldValidation") == "Strict":
            fields = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise api_error(400, "BadRequest", f"strict decoding error: {fields}")

    def _refuse_invalid(self, crd: CrdVersion, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        causes = crd.validate(obj, old)
        if causes:
            message, details = crd.invalid(str(obj["metadata"].get("name")), causes)
            raise api_error(422, "Invalid", message, details)

    def _not_found(self, request: rendering.Request) -> k8s.KubernetesError:
        name = objs.resource_name(request.resource)
        details = {"name": request.name, "group": request.resource.group, "kind": request.resource.plural}
        return api_error(404, "NotFound", f'{name} "{request.name}" not found', details)

    def _conflict(self, request: rendering.Request) -> k8s.KubernetesError:
        name = objs.resource_name(request.resource)
        details = {"name": request.name, "group": request.resource.group, "kind": request.resource.plural}
        message = (
            f'Operation cannot be fulfilled on {name} "{request.name}": the object has been modified; please apply '
            "your changes to the latest version and try again"
        )
        return api_error(409, "Conflict", message, details)

