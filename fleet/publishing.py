"""Publishing a bundle to the fleet: verify it, keep a copy beside the registry, register it.

The fleet serves transfers from its own copy (``fleet.db`` keeps its bundles in
``fleet.bundles/``), so the file a user published from can move or change without changing
what devices receive; the registry records the copy's SHA-256, and a published id never
changes content. What is published is checked against the trust store first (DESIGN.md,
"Trust on the fleet side"); a bundle that does not verify is refused with exit 3.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from edgeml.fleet.records import BundleRecord
from edgeml.fleet.registry import FleetRegistry
from edgeml.toolkit.bundle import sha256_file, verify_bundle
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.trust import TrustStore


def bundle_store(db_path: Path) -> Path:
    """The folder where the fleet keeps the bundles it publishes (beside its database)."""
    return db_path.with_name(db_path.stem + ".bundles")


def publish_bundle(
    registry: FleetRegistry, bundle_path: Path, trust: TrustStore, *, now: float | None = None
) -> tuple[BundleRecord, bool]:
    """Verify a bundle, copy it into the fleet's store and register it.

    Returns:
        The bundle's record, and whether it was new (False: the same bundle was already
        published).

    Raises:
        BundleError: the bundle does not verify against ``trust`` (exit 3).
        InputError: a bundle with the same id but other content is already published.
    """
    verified = verify_bundle(bundle_path, trust)
    store = bundle_store(registry.path)
    store.mkdir(parents=True, exist_ok=True)
    target = store / f"{verified.bundle_id}.edgeml"
    temporary = target.with_suffix(".edgeml.tmp")
    shutil.copyfile(bundle_path, temporary)
    with temporary.open("rb+") as handle:
        os.fsync(handle.fileno())
    sha256 = sha256_file(temporary)
    manifest = verified.manifest
    record = BundleRecord(
        bundle_id=verified.bundle_id,
        name=manifest.name,
        version=manifest.version,
        profile=manifest.profile,
        sha256=sha256,
        size=temporary.stat().st_size,
        path=str(target),
        key_id=verified.key_id,
        published_at=time.time() if now is None else now,
    )
    existing = registry.bundle(verified.bundle_id)
    if existing is not None:
        temporary.unlink()
        if existing.sha256 != sha256:
            raise InputError(
                f"{bundle_path}: bundle {verified.bundle_id} is already published with other "
                f"content (sha256 {existing.sha256[:12]}…); a published id never changes: "
                "build it with a new --version"
            )
        return existing, False
    os.replace(temporary, target)  # an orphan file if we stop here; publishing again fixes it
    return record, registry.add_bundle(record)
