"""Realistic sample events for demos and benchmarks (deterministic for a given seed).

Events are spread around real venues' cities (real coordinates, up to ``spread_km`` from the
centre), over ~20 topics, with start times over several months (local times, mostly
evenings, with the city's UTC offset) and varied titles and descriptions."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from eventpost.geo import EARTH_RADIUS_KM

# City -> (UTC offset in hours, lat, lng, neighbourhoods used in addresses).
CITIES: dict[str, tuple[int, float, float, tuple[str, ...]]] = {
    "Paris": (1, 48.8566, 2.3522, ("Le Marais", "Montmartre", "Belleville", "Bastille")),
    "Lyon": (1, 45.7640, 4.8357, ("Presqu'ile", "Croix-Rousse", "Vieux Lyon")),
    "Berlin": (1, 52.5200, 13.4050, ("Kreuzberg", "Mitte", "Neukoelln", "Prenzlauer Berg")),
    "London": (0, 51.5074, -0.1278, ("Shoreditch", "Camden", "Brixton", "Soho")),
    "Barcelona": (1, 41.3874, 2.1686, ("El Born", "Gracia", "Poblenou")),
    "New York": (-5, 40.7128, -74.0060, ("Brooklyn", "Harlem", "SoHo", "Queens")),
    "Toronto": (-5, 43.6532, -79.3832, ("Kensington", "Leslieville", "The Annex")),
    "Sao Paulo": (-3, -23.5505, -46.6333, ("Vila Madalena", "Pinheiros", "Liberdade")),
    "Nairobi": (3, -1.2921, 36.8219, ("Westlands", "Kilimani", "Karen")),
    "Tokyo": (9, 35.6762, 139.6503, ("Shibuya", "Shimokitazawa", "Asakusa", "Koenji")),
    "Sydney": (10, -33.8688, 151.2093, ("Newtown", "Surry Hills", "Bondi")),
    "Suva": (12, -18.1248, 178.4501, ("Waimanu", "Samabula", "Laucala Bay")),
}

# Topic -> (title nouns, describing words).
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "jazz": (("jazz night", "jam session", "swing evening"), ("quartet", "standards", "bebop")),
    "rock": (("rock concert", "garage band night"), ("guitars", "loud", "local bands")),
    "classical": (("string quartet", "piano recital", "chamber concert"), ("Bach", "Ravel")),
    "electronic": (("techno night", "DJ set", "synth workshop"), ("modular", "bass", "late")),
    "food": (("street food market", "cooking class", "supper club"), ("tasting", "chefs")),
    "wine": (("wine tasting", "natural wine fair"), ("sommelier", "vineyards", "pairing")),
    "art": (("gallery opening", "sketching meetup", "art walk"), ("painting", "installations")),
    "photography": (("photo walk", "darkroom workshop"), ("film cameras", "portraits")),
    "film": (("film screening", "short film night"), ("director Q&A", "subtitled", "cinema")),
    "theatre": (("improv show", "theatre premiere"), ("comedy", "drama", "stage")),
    "dance": (("salsa social", "tango milonga", "dance class"), ("beginners", "live band")),
    "books": (("book club", "poetry reading", "author talk"), ("novel", "signing", "poems")),
    "tech": (("tech meetup", "hackathon", "lightning talks"), ("cloud", "open source")),
    "python": (("Python user group", "Django sprint"), ("asyncio", "packaging", "typing")),
    "startups": (("founder breakfast", "pitch night"), ("investors", "demo", "networking")),
    "science": (("science cafe", "astronomy night"), ("telescopes", "lab tour", "research")),
    "kids": (("family workshop", "puppet show", "story time"), ("children", "crafts")),
    "running": (("park run", "trail run", "running club"), ("5 km", "pace groups")),
    "yoga": (("sunrise yoga", "yoga in the park"), ("mats provided", "all levels")),
    "markets": (("flea market", "vintage fair", "makers market"), ("crafts", "bargains")),
    "outdoors": (("hike", "river clean-up", "bike tour"), ("nature", "picnic", "trails")),
}
ADJECTIVES = ("Open-air", "Late", "Friday", "Monthly", "Free", "Summer", "Winter", "Cozy")
VENUES = ("Hall", "Club", "Garden", "Warehouse", "Library", "Cafe", "Studio", "Park", "Loft")
STREETS = ("Main Street", "Station Road", "River Walk", "Market Square", "Church Lane")


def _offset(lat: float, lng: float, km: float, bearing: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lng) towards ``bearing`` (radians) on the sphere."""
    d = km / EARTH_RADIUS_KM
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing))
    l2 = l1 + math.atan2(
        math.sin(bearing) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    lng2 = (math.degrees(l2) + 540) % 360 - 180
    return round(math.degrees(p2), 6), round(lng2, 6)


def sample_events(
    count: int,
    *,
    seed: int = 1,
    start: datetime | None = None,
    days: int = 180,
    spread_km: float = 15.0,
) -> Iterator[dict[str, Any]]:
    """``count`` event bodies (the shape ``POST /v1/events`` takes), starting from
    ``start`` (default: today, 00:00 UTC) over ``days`` days."""
    rng = random.Random(seed)
    base = start or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    cities = list(CITIES)
    topics = list(TOPICS)
    for n in range(count):
        city = rng.choice(cities)
        offset, lat, lng, quarters = CITIES[city]
        local = timezone(timedelta(hours=offset))
        lat, lng = _offset(lat, lng, spread_km * math.sqrt(rng.random()), rng.uniform(0, 6.283))
        chosen = rng.sample(topics, rng.choice((1, 1, 2, 2, 3)))
        nouns, words = TOPICS[chosen[0]]
        noun = rng.choice(nouns)
        quarter = rng.choice(quarters)
        venue = f"{quarter} {rng.choice(VENUES)}"
        title = f"{rng.choice(ADJECTIVES)} {noun} in {quarter}"
        extra = ", ".join(rng.sample(words, min(2, len(words))))
        description = (
            f"{noun[0].upper()}{noun[1:]} at {venue}, {city}: {extra}. "
            f"Also for fans of {' and '.join(chosen)}. Event #{n + 1}."
        )
        day = (base + timedelta(days=rng.randrange(days))).replace(tzinfo=local)
        hour = rng.choice((10, 11, 14, 18, 19, 19, 20, 20, 21))
        starts = day + timedelta(hours=hour, minutes=rng.choice((0, 0, 15, 30, 45)))
        ends = starts + timedelta(minutes=rng.choice((60, 90, 120, 180, 240)))
        yield {
            "title": title,
            "description": description,
            "topics": chosen,
            "starts_at": starts.isoformat(),
            "ends_at": ends.isoformat(),
            "place": {
                "name": venue,
                "address": f"{rng.randint(1, 200)} {rng.choice(STREETS)}, {quarter}, {city}",
                "lat": lat,
                "lng": lng,
            },
        }
