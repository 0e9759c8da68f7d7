"""The product catalog: products with SKUs and prices, the currency, sample orders.

A YAML file in the bot folder (``catalog.yml``, or ``HABLA_CATALOG``), read off the
event loop and cached until the file changes, so authors edit prices without a
restart. A product with ``recurring: month`` (or ``year``) is sold as a subscription;
``stripe_price: price_...`` charges an existing Stripe Price instead of the listed
price, ``paypal_plan: P-...`` names the PayPal billing plan a recurring product is
sold with on PayPal, and ``payments: paypal`` sells the product through that provider
(one of ``HABLA_PAYMENTS``) instead of the first one configured.

Money is converted and written in one place: :func:`to_minor` (a price as the integer
payment APIs want), :func:`from_minor` (back to the major unit, e.g. for a CRM) and
:func:`format_money` (what the user reads), all by the currency's own minor unit
(:func:`minor_units`), so ¥1200 stays 1200 and 19.90 EUR is 1990 cents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CATALOG_ENV_VAR = "HABLA_CATALOG"
BOT_DIR_ENV_VAR = "HABLA_BOT_DIR"

# ---- money ---------------------------------------------------------------------------
# Minor units as Stripe counts them (https://docs.stripe.com/currencies): an amount of
# 1990 is 19.90 EUR, 1200 is ¥1200, 5120 is 5.120 KWD.

# Stripe's zero-decimal currencies: the amount is the price itself.
ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
# Three-decimal currencies; Stripe wants the last digit 0 (5.124 KWD is charged 5.120).
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Two-decimal in Stripe's API but charged in whole units only, the amount a multiple of
# 100 (Stripe's "special cases": 100 is 1 Icelandic króna).
WHOLE_UNITS = frozenset({"ISK"})
# Languages (ISO 639-1) that write 19,90 rather than 19.90.
DECIMAL_COMMA = frozenset(
    "af az be bg bs ca cs da de el es et eu fi fo fr gl hr hu hy id is it ka kk lb lt lv "
    "mk nb nl nn no pl pt ro ru sk sl sq sr sv tr uk uz vi".split()
)


def minor_units(currency: str) -> int:
    """Digits of the currency's minor unit: 0 (JPY), 3 (KWD) or 2 (EUR and the rest)."""
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_minor(amount: float | int | str | Decimal, currency: str) -> int:
    """A price in the major unit (19.90) as the integer in minor units payment APIs
    want (1990; ¥1200 -> 1200), rounded half up to an amount the currency can be
    charged in (whole króna, a last digit 0 for three-decimal currencies)."""
    code = currency.upper()
    step = 100 if code in WHOLE_UNITS else 10 if code in THREE_DECIMAL else 1
    exact = Decimal(str(amount)).scaleb(minor_units(code)) / step
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)) * step


def from_minor(minor: int, currency: str) -> Decimal:
    """An amount in minor units back in the major unit: 1990 EUR -> 19.90, 1200 JPY -> 1200."""
    return Decimal(int(minor)).scaleb(-minor_units(currency))


def format_money(
    minor: int, currency: str, language: str = "", *, decimal_comma: bool | None = None
) -> str:
    """An amount in minor units as the user reads it: "19.90 EUR", "19,90 EUR" for a
    language that writes a decimal comma (or ``decimal_comma=True``), "1200 JPY"."""
    code = currency.upper()
    places = 0 if code in WHOLE_UNITS else minor_units(code)
    text = f"{from_minor(minor, code):.{places}f}"
    if decimal_comma is None:
        decimal_comma = language.split("-")[0].lower() in DECIMAL_COMMA
    return (text.replace(".", ",") if decimal_comma else text) + f" {code}"


@dataclass(frozen=True)
class Product:
    """One product from the catalog."""

    name: str
    price: float
    sku: str
    synonyms: tuple[str, ...] = ()
    names: tuple[tuple[str, str], ...] = ()  # (language, name) for the product's name
    recurring: str = ""  # "month" or "year": sold as a subscription
    stripe_price: str = ""  # a Stripe Price id (price_...) to charge instead of price_data
    paypal_plan: str = ""  # a PayPal billing plan id (P-...) for a recurring product
    payments: str = ""  # the payment provider to sell it with ("": the first configured)


def display_name(product: Product, language: str) -> str:
    """The product's name in ``language`` (``names:`` in the catalog), else its name."""
    return dict(product.names).get(language, product.name)


@dataclass(frozen=True)
class Catalog:
    """Parsed catalog file: products, sample orders and currency."""

    currency: str
    products: tuple[Product, ...]
    orders: dict[str, dict[str, Any]]

    def find_product(self, text: str) -> Product | None:
        """Find a product by name or synonym (case, spacing and plural 's' ignored)."""
        wanted = _product_key(text)
        if not wanted:
            return None
        candidates = {wanted, wanted.removesuffix("s")}
        for product in self.products:
            for alias in (product.name, *product.synonyms):
                key = _product_key(alias)
                if key in candidates:
                    return product
        return None

    def by_sku(self, sku: str) -> Product | None:
        return next((p for p in self.products if p.sku == sku), None)

    def minor(self, price: float) -> int:
        """A price in the currency's minor unit, as payment APIs want it (:func:`to_minor`)."""
        return to_minor(price, self.currency)

    def find_order(self, order_number: str) -> dict[str, Any] | None:
        """Return the sample order with this (normalised) number, if any."""
        return self.orders.get(order_number)


def _product_key(text: str) -> str:
    """Lower-case and keep only letters and digits ("T Shirt" -> "tshirt")."""
    return re.sub(r"[\W_]+", "", text.casefold())


def catalog_path() -> Path:
    """$HABLA_CATALOG (relative to the bot folder), else catalog.yml in the bot folder."""
    bot_dir = Path(os.environ.get(BOT_DIR_ENV_VAR) or ".")
    path = Path(os.environ.get(CATALOG_ENV_VAR) or "catalog.yml").expanduser()
    return path if path.is_absolute() else bot_dir.resolve() / path


_cache: dict[tuple[str, int], Catalog] = {}
_cache_lock = threading.Lock()


def _parse_catalog(raw: object) -> Catalog:
    """Build a Catalog from the parsed YAML document."""
    if not isinstance(raw, dict):
        raise TypeError("catalog file must contain a mapping at the top level")
    products = tuple(
        Product(
            name=str(item["name"]),
            price=float(item["price"]),
            sku=str(item.get("sku", "")),
            synonyms=tuple(str(s) for s in item.get("synonyms") or ()),
            names=tuple((str(k), str(v)) for k, v in (item.get("names") or {}).items()),
            recurring=str(item.get("recurring") or ""),
            stripe_price=str(item.get("stripe_price") or ""),
            paypal_plan=str(item.get("paypal_plan") or ""),
            payments=str(item.get("payments") or ""),
        )
        for item in raw.get("products") or ()
    )
    orders = {
        str(number).upper(): dict(details or {})
        for number, details in (raw.get("orders") or {}).items()
    }
    return Catalog(
        currency=str(raw.get("currency", "EUR")),
        products=products,
        orders=orders,
    )


def read_catalog(path: Path) -> Catalog:
    """Read and parse the catalog; cached until the file's mtime changes."""
    key = (str(path), path.stat().st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    with path.open(encoding="utf-8") as handle:
        catalog = _parse_catalog(yaml.safe_load(handle))
    with _cache_lock:
        # Drop stale versions of this file, then remember the new one.
        for old_key in [k for k in _cache if k[0] == key[0]]:
            del _cache[old_key]
        _cache[key] = catalog
    return catalog


async def load_catalog(path: Path | None = None) -> Catalog | None:
    """Load the catalog off the event loop; None (logged) if it can't be read."""
    path = path or catalog_path()
    try:
        return await asyncio.to_thread(read_catalog, path)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        logger.exception("Could not load the catalog from %s", path)
        return None
