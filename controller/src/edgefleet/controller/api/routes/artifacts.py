"""Artifact downloads over HTTP with Range, for devices and operators."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, status
from fastapi.responses import FileResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from edgefleet.controller.api.deps import ServiceDep, token_matches
from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.openapi import error_responses
from edgefleet.controller.api.schemas import DEVICE_ID_PATTERN, SHA256_PATTERN

router = APIRouter(tags=["artifacts"])
_bearer = HTTPBearer(auto_error=False)
# The signed URL's HMAC, a credential of its own: the schema lists it as the alternative to
# the bearer token (``device`` and ``expires`` are what it signs).
_signed_url = APIKeyQuery(
    name="sig",
    scheme_name="SignedArtifactUrl",
    description="HMAC-SHA256 (64 hex digits) of a device's artifact URL, from its manifest; "
    "sent with that URL's `device` and `expires`",
    auto_error=False,
)

# One range, as the agent asks when it resumes: ``bytes=<first>-[<last>]``.
_RANGE = re.compile(r"bytes=([0-9]{1,15})-([0-9]{0,15})")
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOWNLOAD_DESCRIPTION = (
    "The artifact's bytes. Allowed with the API token, or with the signed URL (`device`, "
    "`expires`, `sig`) a device's manifest carries.\n\n"
    "A `Range: bytes=<first>-[<last>]` header (one range) resumes a download: the answer is "
    "206 with those bytes, or 416 when the range misses the artifact or is not of that form."
)


def range_refusal(http_range: str, size: int) -> str | None:
    """Why a ``Range`` header cannot be served from an artifact of ``size`` bytes, or None."""
    match = _RANGE.fullmatch(http_range.strip())
    if match is None:
        return f"range {http_range[:60]!r}: only one range, bytes=<first>-[<last>], is served"
    first, last = int(match[1]), int(match[2]) if match[2] else None
    if first >= size or (last is not None and last < first):
        return f"range {http_range!r} is outside the artifact's {size} bytes"
    return None


@router.get(
    "/artifacts/{sha256}",
    response_class=FileResponse,
    description=DOWNLOAD_DESCRIPTION,
    responses={
        200: {"description": "the artifact's bytes", "content": _BYTES},
        206: {"description": "the requested byte range", "content": _BYTES},
        **error_responses(
            401,
            403,
            404,
            416,
            422,
            descriptions={
                401: "neither the API token nor a device's signed URL",
                403: "a wrong token, or a signed URL that is forged, expired or another artifact's",
                404: "no artifact with that sha256",
            },
        ),
    },
)
def download_artifact(
    sha256: Annotated[str, Path(pattern=SHA256_PATTERN, description="the artifact's sha256")],
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    sig: Annotated[str | None, Depends(_signed_url)],
    device: Annotated[
        str | None, Query(pattern=DEVICE_ID_PATTERN, description="signed URL: the device")
    ] = None,
    expires: Annotated[
        int | None, Query(ge=0, le=2**53, description="signed URL: Unix time it expires")
    ] = None,
    # Described in words, not as a parameter: fuzzers treat Range as theirs to vary.
    http_range: Annotated[str | None, Header(alias="Range", include_in_schema=False)] = None,
) -> FileResponse:
    if credentials is not None:
        if not token_matches(service, credentials.credentials):
            raise ApiError(status.HTTP_403_FORBIDDEN, "wrong API token", error="Forbidden")
    elif device is not None and expires is not None and sig is not None:
        refused = service.artifact_urls.check(device, sha256, expires, sig)
        if refused is not None:
            raise ApiError(status.HTTP_403_FORBIDDEN, refused, error="ArtifactUrlRefused")
    else:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "artifact downloads need the API token or a device's signed URL",
            error="Unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not service.store.contains(sha256):
        raise ApiError(404, f"no artifact {sha256[:16]!r}", error="ArtifactNotFoundError")
    path = service.store.path_for(sha256)
    size = path.stat().st_size
    refused = range_refusal(http_range, size) if http_range is not None else None
    if refused is not None:  # answered here, so Starlette's plain-text 400/416 never are
        raise ApiError(
            status.HTTP_416_RANGE_NOT_SATISFIABLE,
            refused,
            error="RangeNotSatisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
