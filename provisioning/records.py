"""Device-signed outcome records: what a maintainer or a member did at a site.

A record is a compact JWS (see :mod:`provisioning.tokens`) signed by the **device's**
Ed25519 key, named by its RFC 7638 thumbprint ``kid``
(:func:`provisioning.keys.thumbprint_kid`). The platform pins each device's public key
and verifies records offline; a verified calibration counts toward the maintainer's
micro-credential. Two kinds, each with its own ``typ`` (claims in ``docs/calibration.md``):

- ``curbside-calibration+jwt``: a sensor calibration, with its readings, the
  coefficients before and after, the residuals, the tolerance and the verdict;
- ``curbside-swap+jwt``: a battery swap at a battery bay.

A record states the past, so no clock is involved in verifying it. Residuals are kept
to :data:`RESIDUAL_DECIMALS` decimals (truncated toward zero, so a passing verdict never
contradicts them), which keeps a 20-point calibration near 1,100 characters. Records of
up to :data:`MAX_POINTS` readings verify up to :data:`MAX_RECORD_CHARS` characters.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Mapping, Sequence
from decimal import ROUND_DOWN, Context, Decimal
from typing import Annotated, Any, Literal, Protocol, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import thumbprint_kid
from provisioning.tokens import KeyRing, TokenVerifier, sign_token, typed_claims

CALIBRATION_TYP = "curbside-calibration+jwt"
SWAP_TYP = "curbside-swap+jwt"
MAX_POINTS = 64  # readings per calibration, and points of a piecewise calibration
MAX_RECORD_CHARS = 16 * 1024  # a 64-point piecewise record in full float precision fits
RESIDUAL_DECIMALS = 4
_EXACT = Context(prec=400)
_CALIBRATION_CLAIMS = ("iss", "aud", "iat", "jti", "sub", "bdg", "sen", "knd", "mth", "ref",
                       "raw", "bef", "aft", "res", "tol", "ok", "ver")
_SWAP_CLAIMS = ("iss", "aud", "iat", "jti", "sub", "bdg", "bay")  # out, inn: null

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=64)]
Identifier = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
Readings = Annotated[tuple[Number, ...], Field(min_length=1, max_length=MAX_POINTS)]
Method = Literal["zero", "span", "colocation"]
Point: TypeAlias = tuple[float, float]


class LinearCoefficients(BaseModel):
    """``calibrated = gain * (raw + offset)``; ``offset`` in raw units, ``gain`` > 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: Literal["linear"] = "linear"
    offset: Number
    gain: Number = Field(gt=0)


class PiecewiseCoefficients(BaseModel):
    """Linear between ``(raw, reference)`` points, both strictly increasing."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: Literal["piecewise"] = "piecewise"
    points: tuple[tuple[Number, Number], ...] = Field(min_length=2, max_length=MAX_POINTS)

    @field_validator("points")
    @classmethod
    def _increasing(cls, points: tuple[Point, ...]) -> tuple[Point, ...]:
        for (raw_a, ref_a), (raw_b, ref_b) in itertools.pairwise(points):
            if not (raw_a < raw_b and ref_a < ref_b):
                raise ValueError("raw and reference values must both increase strictly")
        return points


CoefficientsClaim: TypeAlias = Annotated[LinearCoefficients | PiecewiseCoefficients,
                                         Field(discriminator="model")]
_COEFFICIENTS: TypeAdapter[LinearCoefficients | PiecewiseCoefficients] = TypeAdapter(
    CoefficientsClaim)


class SupportsClaim(Protocol):
    """Anything that states itself as a claim value (``edge.calibration.Coefficients``)."""

    def to_claim(self) -> dict[str, Any]: ...


def coefficients_claim(value: object) -> LinearCoefficients | PiecewiseCoefficients:
    """Parse a ``bef``/``aft`` claim value; raise ValueError naming what is wrong."""
    if isinstance(value, LinearCoefficients | PiecewiseCoefficients):
        return value
    try:
        return _COEFFICIENTS.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"coefficients {where}: {first['msg']}") from exc


class CalibrationRecord(BaseModel):
    """The verified claims of a calibration record, named for the domain.

    ``reference``, ``raw`` and ``residuals`` pair up; a ``zero`` calibration's references
    are all 0; ``passed`` is true only if every ``|residual|`` is at most ``tolerance``.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    device: Name = Field(alias="iss")
    site: Name = Field(alias="aud")
    issued_at: int = Field(alias="iat", strict=True)
    record_id: Name = Field(alias="jti")
    maintainer: Name = Field(alias="sub")
    badge_id: Name = Field(alias="bdg")
    sensor: Identifier = Field(alias="sen")
    sensor_kind: Annotated[str, Field(strict=True, min_length=1, max_length=32)] = Field(
        alias="knd")
    method: Method = Field(alias="mth")
    reference: Readings = Field(alias="ref")
    raw: Readings = Field(alias="raw")
    before: CoefficientsClaim = Field(alias="bef")
    after: CoefficientsClaim = Field(alias="aft")
    residuals: Readings = Field(alias="res")
    tolerance: Number = Field(alias="tol", ge=0)
    passed: bool = Field(alias="ok", strict=True)
    version: int = Field(alias="ver", ge=1, strict=True)

    @field_validator("reference")
    @classmethod
    def _zero_means_zero(cls, reference: tuple[float, ...],
                         info: ValidationInfo) -> tuple[float, ...]:
        if info.data.get("method") == "zero" and any(value != 0 for value in reference):
            raise ValueError("a zero calibration's references are all 0")
        return reference

    @field_validator("raw", "residuals")
    @classmethod
    def _paired(cls, values: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        reference = info.data.get("reference")
        if reference is not None and len(values) != len(reference):
            raise ValueError(f"{len(values)} values for {len(reference)} references")
        return values

    @field_validator("passed")
    @classmethod
    def _verdict_agrees(cls, passed: bool, info: ValidationInfo) -> bool:
        residuals, tolerance = info.data.get("residuals"), info.data.get("tolerance")
        if passed and residuals is not None and tolerance is not None \
                and any(abs(r) > tolerance for r in residuals):
            raise ValueError("passed, yet a residual exceeds the tolerance")
        return passed


class Battery(BaseModel):
    """A battery as it left or entered a bay."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")
    battery_id: Name = Field(alias="id")
    soc_pct: Number | None = Field(default=None, ge=0, le=100)  # None: not reported
    cycles: int | None = Field(default=None, ge=0, strict=True)  # (a shunt has no count)
    voltage_v: Number | None = Field(default=None, ge=0)


class SwapRecord(BaseModel):
    """The verified claims of a battery swap: the battery ``taken`` out of the bay and the
    one ``returned`` to it. Either may be ``None`` (not known, or no battery), not both."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    device: Name = Field(alias="iss")
    site: Name = Field(alias="aud")
    issued_at: int = Field(alias="iat", strict=True)
    record_id: Name = Field(alias="jti")
    member: Name = Field(alias="sub")
    badge_id: Name = Field(alias="bdg")
    bay: Identifier = Field(alias="bay")
    taken: Battery | None = Field(alias="out")
    returned: Battery | None = Field(alias="inn")

    @field_validator("returned")
    @classmethod
    def _a_battery_moved(cls, returned: Battery | None, info: ValidationInfo) -> Battery | None:
        if returned is None and info.data.get("taken", False) is None:
            raise ValueError("a swap names the battery taken, the one returned, or both")
        return returned


def truncated(value: float, decimals: int = RESIDUAL_DECIMALS) -> float:
    """``value`` cut toward zero to ``decimals`` decimals: never larger in magnitude."""
    cut = Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN,
                                  context=_EXACT)  # every digit of the largest float
    return float(cut)  # the float nearest a smaller |decimal| is no larger than |value|


CoefficientsLike: TypeAlias = Mapping[str, Any] | SupportsClaim | LinearCoefficients | \
    PiecewiseCoefficients


def _claim(value: CoefficientsLike) -> object:
    if isinstance(value, LinearCoefficients | PiecewiseCoefficients):
        return value.model_dump()
    return dict(value) if isinstance(value, Mapping) else value.to_claim()


def _truncated_residuals(values: Sequence[float]) -> list[object]:
    """Residuals truncated; anything not a finite number is left for the model to name."""
    return [truncated(float(v)) if isinstance(v, float | int) and not isinstance(v, bool)
            and math.isfinite(v) else v for v in values]


def _sign(claims: dict[str, Any], key: Ed25519PrivateKey, kid: str | None, typ: str) -> str:
    thumbprint = thumbprint_kid(key.public_key())
    if kid is not None and kid != thumbprint:
        raise ValueError(f"kid {kid!r} is not the device key's thumbprint {thumbprint!r}")
    token = sign_token(claims, key, kid=thumbprint, typ=typ)
    if len(token) > MAX_RECORD_CHARS:
        raise ValueError(f"record of {len(token)} characters; at most {MAX_RECORD_CHARS} verify")
    return token


def sign_calibration(
    key: Ed25519PrivateKey,
    *,
    kid: str | None = None,
    device: str,
    site: str,
    now: int,
    maintainer: str,
    badge_id: str,
    sensor: str,
    sensor_kind: str,
    method: str,
    reference: Sequence[float],
    raw: Sequence[float],
    before: CoefficientsLike,
    after: CoefficientsLike,
    residuals: Sequence[float],
    tolerance: float,
    passed: bool,
    version: int,
    record_id: str | None = None,
) -> str:
    """Sign a calibration record with the device ``key``, named by its thumbprint (a
    ``kid`` given must be that thumbprint). ``method`` is ``zero``, ``span`` or
    ``colocation``; ``before``/``after`` are coefficients (``to_claim()`` or the claim).

    ``residuals`` are truncated toward zero to :data:`RESIDUAL_DECIMALS` decimals. Claims
    a verifier would refuse raise ValueError naming the claim (``claim res: ...``).
    """
    claims: dict[str, Any] = {
        "iss": device, "aud": site, "iat": now, "jti": record_id or secrets.token_urlsafe(9),
        "sub": maintainer, "bdg": badge_id, "sen": sensor, "knd": sensor_kind, "mth": method,
        "ref": list(reference), "raw": list(raw), "bef": _claim(before), "aft": _claim(after),
        "res": _truncated_residuals(residuals), "tol": tolerance, "ok": passed, "ver": version,
    }
    typed_claims(CalibrationRecord, claims, error=ValueError)  # refuse what a verifier refuses
    return _sign(claims, key, kid, CALIBRATION_TYP)


def sign_swap(
    key: Ed25519PrivateKey,
    *,
    kid: str | None = None,
    device: str,
    site: str,
    now: int,
    member: str,
    badge_id: str,
    bay: str,
    taken: Mapping[str, Any] | Battery | None,
    returned: Mapping[str, Any] | Battery | None,
    record_id: str | None = None,
) -> str:
    """Sign a battery swap record with the device ``key`` (as :func:`sign_calibration`).

    ``taken``/``returned`` are :class:`Battery` or ``{"id", "soc_pct", "cycles",
    "voltage_v"}`` (``voltage_v`` may be ``None``), or ``None``, but not both ``None``.
    """
    def battery(value: Mapping[str, Any] | Battery | None) -> object:
        if isinstance(value, Battery):
            return value.model_dump(by_alias=True)
        return None if value is None else dict(value)

    claims: dict[str, Any] = {
        "iss": device, "aud": site, "iat": now, "jti": record_id or secrets.token_urlsafe(9),
        "sub": member, "bdg": badge_id, "bay": bay, "out": battery(taken),
        "inn": battery(returned),
    }
    typed_claims(SwapRecord, claims, error=ValueError)
    return _sign(claims, key, kid, SWAP_TYP)


class RecordVerifier:
    """Verifies records signed by the pinned device keys (``kid`` -> key) for one site.

    Pin one device's keys per verifier and pass ``device`` to bind ``iss`` to it: a
    device's key then cannot speak for another device. Raises
    :class:`~provisioning.errors.TokenRejected` for every failure.
    """

    def __init__(self, device_keys: KeyRing, *, site: str, device: str | None = None) -> None:
        self._calibrations = TokenVerifier(device_keys, typ=CALIBRATION_TYP, audience=site,
                                           required=_CALIBRATION_CLAIMS,
                                           max_chars=MAX_RECORD_CHARS)
        self._swaps = TokenVerifier(device_keys, typ=SWAP_TYP, audience=site,
                                    required=_SWAP_CLAIMS, max_chars=MAX_RECORD_CHARS)
        self._device = device

    def verify_calibration(self, token: str) -> CalibrationRecord:
        """Signature, ``typ``, site and claims; no clock: a record is about the past."""
        record = typed_claims(CalibrationRecord, self._calibrations.verify(token, now=None))
        self._check_device(record.device)
        return record

    def verify_swap(self, token: str) -> SwapRecord:
        """Signature, ``typ``, site and claims; no clock: a record is about the past."""
        record = typed_claims(SwapRecord, self._swaps.verify(token, now=None))
        self._check_device(record.device)
        return record

    def _check_device(self, device: str) -> None:
        if self._device is not None and device != self._device:
            raise TokenRejected(TokenFault.BAD_CLAIMS,
                                f"iss {device!r} is not the pinned device {self._device!r}")
