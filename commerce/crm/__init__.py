"""CRM adapters, registered by the name used in settings (``HABLA_CRM``) in
``runtime/providers.py`` (CRMS); their base class is :class:`commerce.crm.base.CRM`."""

from __future__ import annotations

from commerce.crm.base import CRM, Contact, Deal, field_map

__all__ = ["CRM", "Contact", "Deal", "field_map"]
