"""CRM: one base class for the adapters (registered by name in ``runtime/providers.py``
CRMS), which keep only their provider's requests and answers.

Every write is idempotent by a key habla chooses (the contact's phone or e-mail, or a
``ref`` such as the order id), so the outbox can retry after a timeout without
creating a second record. The base owns what is common to every adapter:

* the SDK calls (:class:`runtime.blocking.BlockingClient`): a thread pool of the
  adapter's own, bounded by ``send.timeout_s``, errors mapped once: TransientError
  (408, 429, 5xx, timeout, connection refused) is retried by the outbox;
  PermanentError is recorded as failed. An adapter's :meth:`~CRM.map_error` adds its
  SDK's exceptions;
* the habla stage → provider stage mapping (:meth:`CRM.stage`) and the habla field →
  provider field mapping of contacts, both overridable from ``HABLA_CRM_FIELD_MAP``
  (:func:`field_map`);
* the contact upsert (:meth:`CRM.upsert_contact`): one lookup by phone or e-mail, the
  phone winning, then an update of the contact found or a creation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from runtime.blocking import BlockingClient
from runtime.errors import PermanentError
from runtime.settings import Settings, SettingsError

# The SDK's own socket timeout exceeds the call's (``timeout_s``) by this much: the
# caller's deadline is what fires, and the pool thread is freed shortly after.
SDK_GRACE_S = 1.0


@dataclass(frozen=True)
class Contact:
    phone: str = ""  # E.164, "+34600111222"
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    language: str = ""  # ISO 639-1
    extra: Mapping[str, Any] = field(default_factory=dict)  # already provider field names


@dataclass(frozen=True)
class Deal:
    ref: str  # habla's idempotency key (e.g. the order id); stored on the record
    name: str
    amount: float
    currency: str  # ISO 4217, "EUR"
    stage: str  # habla stage name: "open", "won", "lost" (mapped per provider)
    contact_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def field_map(raw: str) -> dict[str, dict[str, str]]:
    """``HABLA_CRM_FIELD_MAP`` ('contact.language=preferred_language,stage.won=Won,
    ref=my_ref') as {"contact": {...}, "stage": {...}, "ref": {"": ...}}."""
    out: dict[str, dict[str, str]] = {"contact": {}, "stage": {}, "ref": {}}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        group, _, name = key.strip().partition(".")
        if not sep or group not in out or (group != "ref" and not name):
            raise SettingsError(
                [
                    f"commerce.crm_field_map (HABLA_CRM_FIELD_MAP): {item!r} is not "
                    "contact.<field>=<name>, stage.<open|won|lost>=<name> or ref=<name>"
                ]
            )
        out[group][name] = value.strip()
    return out


class CRM(BlockingClient, ABC):
    """A CRM adapter: ``await self.call(sdk_fn, ...)`` for every SDK call."""

    name: ClassVar[str]
    CONTACT_FIELDS: ClassVar[Mapping[str, str]]  # habla field -> provider field ("": none)
    STAGES: ClassVar[Mapping[str, str]]  # habla stage -> provider stage
    stage_label: ClassVar[str] = "stage"  # what the provider calls a stage, for errors

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        max_workers: int = 4,
        stage_map: Mapping[str, str] | None = None,
        contact_fields: Mapping[str, str] | None = None,
        problems: Iterable[str] = (),
    ) -> None:
        """``stage_map`` and ``contact_fields`` override entries of :attr:`STAGES` and
        :attr:`CONTACT_FIELDS` (a field mapped to "" is not written). ``problems``: the
        adapter's own configuration problems, reported with the base's in one error."""
        problems = list(problems)
        unknown = sorted(set(contact_fields or {}) - set(self.CONTACT_FIELDS))
        if unknown:
            problems.append(f"contact_fields: unknown habla fields {unknown}")
        if timeout_s <= 0:
            problems.append("timeout_s must be > 0")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        super().__init__(timeout_s=timeout_s, max_workers=max_workers)
        self.stage_map = {**self.STAGES, **(stage_map or {})}
        self.contact_fields = {**self.CONTACT_FIELDS, **(contact_fields or {})}

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> CRM:
        """Build from the settings (registered in runtime/providers.py CRMS)."""

    @staticmethod
    def settings_options(settings: Settings) -> tuple[str, dict[str, Any]]:
        """What every adapter takes from the settings: the field map's ``ref`` ("" for
        the adapter's default) and the keyword arguments ``timeout_s``,
        ``contact_fields`` and ``stage_map``."""
        mapping = field_map(settings.commerce.crm_field_map)
        options: dict[str, Any] = {
            "timeout_s": settings.send.timeout_s,
            "contact_fields": mapping["contact"],
            "stage_map": mapping["stage"],
        }
        return mapping["ref"].get("", ""), options

    @property
    def sdk_timeout_s(self) -> float:
        """The socket timeout to give the SDK (see :data:`SDK_GRACE_S`)."""
        return self.timeout_s + SDK_GRACE_S

    async def start(self) -> None:
        """Open clients."""

    async def close(self) -> None:
        """Release clients (adapters extend this); the thread pool is shut here."""
        await self.close_pool()

    def stage(self, habla_stage: str) -> str:
        """The provider's stage for a habla stage; PermanentError for an unknown one."""
        try:
            return self.stage_map[habla_stage]
        except KeyError:
            raise PermanentError(
                f"{self.name}: no {self.stage_label} for habla stage {habla_stage!r} "
                f"(stage_map has {sorted(self.stage_map)})"
            ) from None

    def mapped_fields(self, contact: Contact, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The contact's non-empty values under their provider field names (habla
        fields in ``skip`` and fields mapped to "" left out)."""
        skipped = set(skip)
        return {
            self.contact_fields[f]: value
            for f in self.CONTACT_FIELDS
            if f not in skipped and (value := getattr(contact, f)) and self.contact_fields[f]
        }

    # ------------------------------------------------------------------ contacts

    async def upsert_contact(self, contact: Contact) -> str:
        """Find the contact by phone, then e-mail; update it or create it. Its id."""
        if not (contact.phone or contact.email):
            raise PermanentError(f"{self.name}: a contact needs a phone number or an e-mail")
        found, email_taken = await self._find_contact(contact)
        fields = self._contact_record(contact, creating=not found)
        if email_taken:  # found by phone; the e-mail stays with the contact that has it
            fields.pop(self.contact_fields["email"], None)
        if found:
            await self._update_contact(found, fields)
            return found
        return await self._create_contact(fields)

    async def _find_contact(self, contact: Contact) -> tuple[str, bool]:
        """The id of the contact with this phone, else with this e-mail ('' for none),
        and whether the e-mail belongs to another contact than the one found."""
        phones = [f for f in dict.fromkeys(self._phone_fields()) if f]
        email = self.contact_fields["email"]
        wanted = [(f, contact.phone) for f in phones if contact.phone]
        wanted += [(email, contact.email)] if email and contact.email else []
        if not wanted:
            return "", False
        records = await self._find_contacts(wanted)

        def holders(fields: Sequence[str], value: str) -> list[str]:
            return [
                record_id
                for record_id, values in records
                if value and any(str(values.get(f) or "").lower() == value.lower() for f in fields)
            ]

        by_phone = holders(phones, contact.phone)
        by_email = holders([email] if email else [], contact.email)
        found = (by_phone or by_email or [record_id for record_id, _ in records] or [""])[0]
        return found, bool(by_email) and found not in by_email

    def _phone_fields(self) -> Sequence[str]:
        """The contact fields a phone number is looked up in."""
        return [self.contact_fields["phone"]]

    @abstractmethod
    async def _find_contacts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """Contacts where any ``field == value`` (case-insensitive), in one request: each
        as its id and its values of those fields."""

    @abstractmethod
    def _contact_record(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        """The fields to write for ``contact`` (``Contact.extra`` included)."""

    @abstractmethod
    async def _create_contact(self, fields: Mapping[str, Any]) -> str:
        """Create a contact with ``fields``. Its id."""

    @abstractmethod
    async def _update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> None:
        """Write ``fields`` to the contact ``contact_id``."""

    # ------------------------------------------------------------------ the rest

    @abstractmethod
    async def create_lead(self, contact: Contact, source: str, ref: str) -> str:
        """A lead for ``contact`` (idempotent by ``ref``). Its id."""

    @abstractmethod
    async def upsert_deal(self, deal: Deal) -> str:
        """Create the deal/opportunity, or update the one already stored under
        ``deal.ref``. Its id."""

    @abstractmethod
    async def move_deal(self, ref: str, stage: str) -> str:
        """Move the deal stored under ``ref`` to habla stage ``stage``. Its id."""

    @abstractmethod
    async def add_note(self, contact_id: str, text: str, ref: str, deal_ref: str = "") -> str:
        """Attach a note (e.g. the conversation transcript) to the contact and, when
        given, the deal; idempotent by ``ref``. Its id."""
