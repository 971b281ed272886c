"""Any S3 API (AWS, MinIO, R2, moto) as an object store, through boto3."""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from loraflow.errors import NotFoundError, StorageError, redact
from loraflow.storage.base import (
    PRESIGN_SECONDS,
    HashingReader,
    ObjectInfo,
    ObjectStore,
    Source,
    as_stream,
    check_key,
)

if TYPE_CHECKING:
    from loraflow.settings import Settings

log = logging.getLogger(__name__)
_MISSING = {"404", "NoSuchKey", "NotFound"}
CLEANUP_RULE = "loraflow-abort-unfinished-uploads"
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}


def s3_credentials(settings: Settings) -> dict[str, str]:
    """loraflow's S3 settings as boto3 takes them; empty ones are left to the AWS chain.

    The one source of S3 access for every part: the store and its presigned URLs
    (``make_client``) and the tools that build their own clients (``s3_environment``).
    """
    secret, token = settings.s3_secret_access_key, settings.s3_session_token
    given = {
        "endpoint_url": settings.s3_endpoint_url,
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": secret.get_secret_value() if secret else None,
        "aws_session_token": token.get_secret_value() if token else None,
    }
    return {k: v for k, v in given.items() if v}


_ENVIRONMENT = {
    "endpoint_url": ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"),
    "region_name": ("AWS_DEFAULT_REGION",),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
}


def s3_environment(settings: Settings) -> dict[str, str]:
    """The same settings as the variables of tools that make their own boto3 clients
    (MLflow's artifact store, a model server loading adapters from S3)."""
    return {
        name: value for key, value in s3_credentials(settings).items() for name in _ENVIRONMENT[key]
    }


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client from settings; credentials fall back to the standard AWS chain."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        **s3_credentials(settings),
        config=Config(
            signature_version="s3v4",
            # "standard" mode backs off exponentially with jitter on throttling (SlowDown, 429),
            # 5xx and connection errors, for every call this store makes.
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
        ),
    )


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``. Uploads above the threshold go multipart."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        threshold: int,
        retry_window: float = 60,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.threshold = threshold
        self.part_size = max(threshold // 4, 5 * 2**20)
        self.retry_window = retry_window

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, source: Source) -> ObjectInfo:
        """One PUT up to the threshold, else a multipart upload sent part by part; each call
        retries through an outage for ``retry_window`` seconds, so a multipart upload resumes
        at the part it was sending. On failure no object and no unfinished upload is left
        (what storage being down kept us from aborting, the next sweep aborts)."""
        full = self._key(key)
        stream, owned = as_stream(source)
        reader = HashingReader(stream)
        try:
            head = reader.read(self.threshold + 1)
            if len(head) <= self.threshold:
                self._retrying(
                    "upload to",
                    key,
                    lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=head),
                )
            else:
                self._multipart(full, key, head, reader)
        except StorageError:
            raise
        except Exception as exc:  # the source failed while it was read
            raise self._error("upload to", key, exc) from exc
        finally:
            if owned:
                stream.close()
        return ObjectInfo(key=key, size=reader.size, sha256=reader.sha256)

    def _multipart(self, full: str, key: str, head: bytes, reader: HashingReader) -> None:
        started = self._retrying(
            "upload to",
            key,
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=full),
        )
        upload_id = started["UploadId"]
        parts: list[dict[str, Any]] = []
        pending = head
        try:
            while pending:
                chunk, pending = pending[: self.part_size], pending[self.part_size :]
                if len(pending) < self.part_size:
                    pending += reader.read(self.part_size)
                number = len(parts) + 1
                sent = self._retrying(
                    f"upload (part {number}) to",
                    key,
                    functools.partial(
                        self.client.upload_part,
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    ),
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            self._retrying(
                "upload to",
                key,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            self._abort(full, upload_id)
            raise

    def _retrying(self, what: str, key: str, call: Callable[[], Any]) -> Any:
        """``call()``, retried with backoff (0.5 s doubling to 8 s) while storage is
        unreachable or answers 5xx, for ``retry_window`` seconds; then a one-line
        StorageError. A missing object is a NotFoundError; other errors (denied, no such
        bucket) fail at once."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + self.retry_window
        pause = 0.5
        while True:
            try:
                return call()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in _MISSING:
                    raise self.missing(key) from None
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                transient = status >= 500 or exc.response["Error"]["Code"] in _TRANSIENT
                failure: Exception = exc
                if not transient:
                    break
            except BotoCoreError as exc:  # connection refused or cut, timeouts
                failure = exc
            if time.monotonic() + pause > deadline:
                break
            log.warning("%s %s%s: %s; retrying in %.1f s", what, self.uri, key, failure, pause)
            time.sleep(pause)
            pause = min(pause * 2, 8.0)
        raise self._error(what, key, failure) from None

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Abort a failed multipart upload so no parts linger. Best effort: a failure here
        (storage still down) is logged and must not hide the upload's own error; the next
        sweep (``abort_unfinished``) or the bucket's lifecycle rule removes the parts."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except Exception as exc:
            log.warning(
                "could not abort the unfinished upload of s3://%s/%s (%s); the next sweep "
                "removes it",
                self.bucket,
                full_key,
                exc,
            )

    @contextmanager
    def _calls(self, what: str, key: str = "") -> Iterator[None]:
        """Map boto3's failures to NotFoundError (a missing object) or one-line StorageErrors
        naming the store and the action; credentials in an endpoint URL are masked."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                raise self.missing(key) from None
            raise self._error(what, key, exc) from None
        except BotoCoreError as exc:  # connection refused, timeouts, no credentials
            raise self._error(what, key, exc) from None

    def _error(self, what: str, key: str, exc: Exception) -> StorageError:
        """One line naming the action and the object; credentials in URLs masked."""
        return StorageError(redact(f"{what} {self.uri}{key} failed: {exc}"))

    def abort_unfinished(self, older_than: timedelta) -> Sequence[str]:
        from datetime import UTC, datetime

        cutoff = datetime.now(UTC) - older_than
        aborted = []
        with self._calls("sweeping unfinished uploads of"):
            pages = self.client.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(upload["Key"][len(self.prefix) :])
        return aborted

    def ensure_cleanup_rule(self) -> bool:
        """Add (never replace) a lifecycle rule aborting this prefix's multipart uploads after
        a day; False, with the reason logged, where the bucket does not allow it."""
        from botocore.exceptions import BotoCoreError, ClientError

        rule = {
            "ID": CLEANUP_RULE,
            "Filter": {"Prefix": self.prefix},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        try:
            try:
                rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            if any(r.get("ID") == CLEANUP_RULE for r in rules):
                return True
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*rules, rule]}
            )
        except (ClientError, BotoCoreError) as exc:
            log.info(
                "no lifecycle rule on s3://%s (%s); sweeps at start clean up", self.bucket, exc
            )
            return False
        return True

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream that rides out an outage: the GET is retried like
        every call, and a read cut off mid-stream asks again for the rest (a Range request
        pinned to the object's ETag), so a large download resumes where it was cut."""
        return _ResumingBody(self, key)  # type: ignore[return-value]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._calls("listing", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"][len(self.prefix) :],
                        size=item["Size"],
                        modified=item["LastModified"],
                    )

    def delete(self, key: str) -> bool:
        existed = self.exists(key)
        with self._calls("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return existed

    def exists(self, key: str) -> bool:
        try:
            with self._calls("checking", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFoundError:
            return False
        return True

    def url(self, key: str, expires_in: int = PRESIGN_SECONDS) -> str:
        if not self.exists(key):
            raise self.missing(key)
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_in,
        )


class _ResumingBody(io.RawIOBase):
    """An object's bytes read through dropped connections (see ``S3Store.open``)."""

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        self.offset = 0
        answer = self._get()
        self.size: int = answer["ContentLength"]
        self.etag: str = answer["ETag"]

    def _get(self) -> Any:
        params = {"Bucket": self.store.bucket, "Key": self.store._key(self.key)}
        if self.offset:
            params |= {"Range": f"bytes={self.offset}-", "IfMatch": self.etag}
        answer = self.store._retrying(
            "reading", self.key, lambda: self.store.client.get_object(**params)
        )
        self.body = answer["Body"]
        return answer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError as Urllib3Error

        view = memoryview(buffer).cast("B")
        progress_at = time.monotonic()
        while True:
            try:
                data = self.body.read(len(view)) if self.offset < self.size else b""
            except (BotoCoreError, Urllib3Error, OSError) as exc:
                problem: Exception = exc
            else:
                if data or self.offset >= self.size:
                    view[: len(data)] = data
                    self.offset += len(data)
                    return len(data)
                problem = ConnectionError(f"the stream ended at byte {self.offset:,}")
            if time.monotonic() - progress_at > self.store.retry_window:
                raise self.store._error("reading", self.key, problem)
            log.warning(
                "reading %s%s cut at byte %s of %s (%s); asking for the rest",
                self.store.uri, self.key, f"{self.offset:,}", f"{self.size:,}", problem,
            )  # fmt: skip
            self.body.close()
            self._get()

    def readall(self) -> bytes:
        out = bytearray()
        buffer = bytearray(min(max(self.size - self.offset, 1), 8 * 2**20))
        while n := self.readinto(buffer):
            out += buffer[:n]
        return bytes(out)

    def close(self) -> None:
        if not self.closed and hasattr(self, "body"):
            self.body.close()
        super().close()
