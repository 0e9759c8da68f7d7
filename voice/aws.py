"""What Amazon Polly and Amazon Transcribe share: where AWS is, who we are there, and
how its failures map onto the error vocabulary.

Credentials are the standard AWS ones: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
and ``AWS_SESSION_TOKEN`` (read by the settings, never logged); left empty, each SDK's
own default chain (shared config files, the instance or task role) is used. The region
is ``AWS_REGION``. ``HABLA_AWS_ENDPOINT_URL`` (or the per-service
``HABLA_POLLY_ENDPOINT_URL``, ``HABLA_TRANSCRIBE_ENDPOINT_URL``) points a service at
another endpoint (a local fake); ``AWS_CA_BUNDLE`` is the certificate file to trust
for TLS instead of the system's store (a corporate proxy, or a local fake's
self-signed certificate).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import SpeechError, is_transient_status
from runtime.settings import Settings

# error codes (the ``x-amzn-errortype`` / ``Error.Code``) that trying again can help with,
# whatever the HTTP status they came with
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "ServiceFailureException",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalFailureException",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


@dataclass(frozen=True)
class AwsAccess:
    """Region, credentials and endpoint for one AWS service."""

    region: str
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    endpoint_url: str = ""
    ca_bundle: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, endpoint_url: str = "") -> AwsAccess:
        """``endpoint_url``: the service's own override, else ``HABLA_AWS_ENDPOINT_URL``."""
        v = settings.voice
        return cls(
            region=v.aws_region,
            access_key_id=v.aws_access_key_id,
            secret_access_key=v.aws_secret_access_key,
            session_token=v.aws_session_token,
            endpoint_url=endpoint_url or v.aws_endpoint_url,
            ca_bundle=v.aws_ca_bundle,
        )

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def __repr__(self) -> str:  # never the secrets
        keys = "keys" if self.has_keys else "default chain"
        return f"AwsAccess({self.region!r}, {keys}, endpoint={self.endpoint_url or 'AWS'!r})"


def aws_error(engine: str, code: str, status: int, message: str) -> SpeechError:
    """An AWS error response as a SpeechError: throttling, 5xx and timeouts are
    transient; bad credentials, an unknown voice, a bad request are not."""
    transient = code in TRANSIENT_CODES or is_transient_status(status)
    return SpeechError(f"{engine}: {status} {code}: {message}".strip(), transient=transient)
