"""Options of an `s3://` source (`source.s3` in a check file).

Every key is optional: with none, boto3's standard environment and credential chain apply
(`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, instance roles...).  Secrets follow the
project rule: `X_env` names an environment variable, `X_file` a file; the value is read when the
source connects and never appears in a message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from reversib.units import parse_duration
from reversib.urls import no_password

Duration = Annotated[float, BeforeValidator(parse_duration)]
ChecksumMode = Literal["when_supported", "when_required"]
Url = Annotated[str, AfterValidator(no_password)]  # never user:password@ (shown and recorded)


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: Url | None = Field(None, description="S3 endpoint of an S3-compatible store "
                                                       "(default: AWS_ENDPOINT_URL_S3, else AWS)")
    region: str | None = Field(None, description="signing region (default: AWS_REGION / the profile's, "
                                                 "else us-east-1)")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="bucket in the path or in the host name")
    profile: str | None = Field(None, description="a named profile of ~/.aws/config and ~/.aws/credentials")
    access_key_id: str | None = Field(None, description="access key id (not a secret; the secret key is given "
                                                        "by *_env or *_file)")
    access_key_id_env: str | None = Field(None, description="environment variable holding the access key id")
    access_key_id_file: str | None = Field(None, description="file holding the access key id")
    secret_access_key_env: str | None = Field(None, description="environment variable holding the secret key")
    secret_access_key_file: str | None = Field(None, description="file holding the secret key")
    session_token_env: str | None = Field(None, description="environment variable holding a session token")
    session_token_file: str | None = Field(None, description="file holding a session token")
    role_arn: str | None = Field(None, description="role to assume (STS AssumeRole) with the credentials above")
    external_id: str | None = Field(None, description="ExternalId for role_arn")
    role_session_name: str = Field("reversib", min_length=2, max_length=64,
                                   description="session name when assuming role_arn")
    sts_endpoint_url: Url | None = Field(None, description="STS endpoint for role_arn (default: AWS's)")
    verify_tls: bool = Field(True, description="verify the endpoint's TLS certificate")
    ca_bundle: str | None = Field(None, description="PEM file of CA certificates to verify the endpoint with")
    request_checksum_calculation: ChecksumMode | None = Field(
        None, description="boto3's request checksums (default: AWS_REQUEST_CHECKSUM_CALCULATION, else "
                          "when_supported; when_required for stores that reject them)")
    response_checksum_validation: ChecksumMode | None = Field(
        None, description="boto3's validation of response checksums (default: AWS_RESPONSE_CHECKSUM_VALIDATION, "
                          "else when_supported); reversib hashes what it downloads anyway")
    trust_etag_md5: bool = Field(True, description="take a plain ETag (single-part, not SSE-KMS/SSE-C) as the "
                                                   "object's MD5 for the stored_checksum tier")
    max_connections: int = Field(32, ge=1, le=1024, description="HTTP connections kept to the endpoint, at most "
                                                                "(at least fixity.parallelism)")
    connect_timeout: Duration = Field(10.0, gt=0, description="TCP/TLS connect timeout")
    read_timeout: Duration = Field(60.0, gt=0, description="longest wait for any bytes of an answer")
    max_attempts: int | None = Field(None, ge=1, le=20, description="attempts per request, first included "
                                                                    "(default: AWS_MAX_ATTEMPTS, else 5)")
    concurrency: int = Field(16, ge=1, le=256, description="objects downloaded at once (replaces "
                                                            "fixity.parallelism for this source)")
    part_digests: bool = Field(True, description="while downloading a multipart object, compute its part "
                                                 "digests, so that a later run accepting stored_checksum can "
                                                 "compare its composite ETag/checksum without a download")
    read_ahead: bool = Field(True, description="read objects of 16 MiB or more ahead of the hasher in a "
                                               "background thread (at most 4 MiB ahead), so that download "
                                               "and hashing overlap")
    max_resumes: int = Field(5, ge=0, le=100, description="ranged re-requests of one object after a cut "
                                                          "connection")
    direct_get: bool = Field(True, description="send object GETs signed by botocore's signer over botocore's "
                                               "HTTP session but outside boto3's request pipeline (about half "
                                               "the client CPU per small object); any answer but 200/206 goes "
                                               "through boto3 and turns it off for the run; not used when "
                                               "response_checksum_validation is when_supported explicitly")

    @model_validator(mode="after")
    def _credentials(self) -> S3Options:
        for name in ("access_key_id", "secret_access_key", "session_token"):
            given = [k for k in (name, f"{name}_env", f"{name}_file") if getattr(self, k, None) is not None]
            if len(given) > 1:
                raise ValueError(f"give only one of {', '.join(given)}")
        has_id = any(getattr(self, k) is not None for k in ("access_key_id", "access_key_id_env",
                                                            "access_key_id_file"))
        has_secret = self.secret_access_key_env is not None or self.secret_access_key_file is not None
        if has_id != has_secret:
            raise ValueError("give both an access key id (access_key_id, _env or _file) and a secret key "
                             "(secret_access_key_env or _file), or neither (boto3's credential chain)")
        has_token = self.session_token_env is not None or self.session_token_file is not None
        if has_token and not has_id:
            raise ValueError("session_token_env/_file needs an access key id and secret key")
        if self.profile is not None and has_id:
            raise ValueError("give either profile or access keys, not both")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id needs role_arn")
        if self.concurrency > self.max_connections:
            raise ValueError(f"concurrency ({self.concurrency}) cannot exceed max_connections "
                             f"({self.max_connections})")
        if not self.verify_tls and self.ca_bundle is not None:
            raise ValueError("ca_bundle is meaningless with verify_tls: false")
        return self

    @property
    def explicit_keys(self) -> bool:
        return self.secret_access_key_env is not None or self.secret_access_key_file is not None
