"""The product catalog: products with SKUs and prices, the currency, sample orders.

A YAML file in the bot folder (``catalog.yml``, or ``HABLA_CATALOG``), read off the
event loop and cached until the file changes, so authors edit prices without a
restart. A product with ``recurring: month`` (or ``year``) is sold as a subscription;
``stripe_price: price_...`` charges an existing Stripe Price instead of the listed
price.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CATALOG_ENV_VAR = "HABLA_CATALOG"
BOT_DIR_ENV_VAR = "HABLA_BOT_DIR"
ZERO_DECIMAL = {
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
}  # Stripe's zero-decimal currencies


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
        """A price in the currency's minor unit (cents), as payment APIs want it."""
        return round(price) if self.currency.upper() in ZERO_DECIMAL else round(price * 100)

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
