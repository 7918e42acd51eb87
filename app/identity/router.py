"""Our own identity: the did:web document that lets PDSes proxy to us, and the owner."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import SettingsDep
from app.identity import SERVICE_ID

router = APIRouter()


@router.get("/.well-known/did.json")
async def did_document(settings: SettingsDep) -> dict[str, object]:
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": settings.did,
        "service": [
            {"id": f"#{SERVICE_ID}", "type": "TangledSpindle", "serviceEndpoint": settings.base_url},
        ],
    }


@router.get("/xrpc/sh.tangled.owner")
async def owner(settings: SettingsDep) -> dict[str, str]:
    return {"owner": settings.require_owner()}
