"""CRM: one base class, adapters registered by the name used in settings.

Every write is idempotent by a key habla chooses (the contact's phone or e-mail, or a
``ref`` such as the order id), so the outbox can retry after a timeout without
creating a second record. Errors are mapped once: TransientError (429, 5xx, timeout,
connection refused) is retried by the outbox; PermanentError is recorded as failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


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


class CRM(ABC):
    name: ClassVar[str]

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    @abstractmethod
    async def upsert_contact(self, contact: Contact) -> str:
        """Find the contact by phone, then e-mail; update it or create it. Its id."""

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
