"""Artifact downloads over HTTP with Range, for devices and operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgefleet.controller.api.deps import ServiceDep, token_matches

router = APIRouter(tags=["artifacts"])
_bearer = HTTPBearer(auto_error=False)


@router.get("/artifacts/{sha256}", response_class=FileResponse)
def download_artifact(
    sha256: str,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    device: Annotated[str | None, Query(max_length=64)] = None,
    expires: Annotated[int | None, Query()] = None,
    sig: Annotated[str | None, Query(max_length=128)] = None,
) -> FileResponse:
    """The artifact's bytes, with HTTP Range so devices resume downloads.

    Allowed with the API token, or with the signed URL a device's manifest carries.
    """
    if credentials is not None:
        if not token_matches(service, credentials.credentials):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong API token")
    elif device is not None and expires is not None and sig is not None:
        refused = service.artifact_urls.check(device, sha256, expires, sig)
        if refused is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refused)
    else:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "artifact downloads need the API token or a device's signed URL",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if len(sha256) != 64 or not service.store.contains(sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {sha256[:16]!r}")
    return FileResponse(
        service.store.path_for(sha256),
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
