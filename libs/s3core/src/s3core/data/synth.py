"""A deterministic, seeded generator of a small fictional world, its passage corpus and QA sets.

Every name is an invented pseudo-word, so no pretrained model knows the answers: a generator can
only get them from retrieved passages.  The world has countries, cities, people, companies,
bands, rivers and universities, linked by relations (person born in city, company founded by
person, city located in country, ...).  Each entity gets one or two short passages titled with its
name; distractor passages (festivals, accords, floods, ...) mention entities without stating
facts about them.

Passages only state *outgoing* relations: a person's passage never names the companies, bands or
universities the person founded, fronts or led, and a city's passage never names what lies in it.
So for a 2-hop question ("In which city was the founder of X born?") the passage holding the
answer does not mention X, and naive retrieval with the raw question tends to miss the second hop.

Output of :func:`synthesize` (all written atomically):

* ``corpus.jsonl`` — ``{"id", "contents"}`` rows, wiki-18 / DPR layout;
* ``synth_1hop.jsonl`` and ``synth_2hop.jsonl`` — FlashRAG rows whose ``metadata`` carries
  ``hops``, ``template``, ``subject`` and ``gold_passage_ids`` (2-hop also ``bridge`` and a
  ``decomposition`` into two 1-hop questions);
* ``manifest.json`` — seed, parameters, counts and the sha256 of every file.

The same arguments always give byte-identical files: only ``random.Random(seed)`` is used.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3core.data.io import corpus_sha256
from s3core.errors import InvalidArgument
from s3core.io import write_json, write_jsonl
from s3core.metrics import answer_in_docs, span_match

__all__ = ["GENERATOR_VERSION", "synthesize"]

GENERATOR_VERSION = 1

CORPUS_FILE = "corpus.jsonl"
ONE_HOP_FILE = "synth_1hop.jsonl"
TWO_HOP_FILE = "synth_2hop.jsonl"
MANIFEST_FILE = "manifest.json"

MIN_ENTITIES = 30
MIN_WORDS = 40
MAX_WORDS = 90

# Share of each entity kind; people take whatever is left.
_KIND_SHARES: dict[str, tuple[float, int]] = {
    "country": (0.04, 2),
    "city": (0.17, 4),
    "company": (0.15, 2),
    "band": (0.09, 2),
    "river": (0.07, 2),
    "university": (0.07, 2),
}

# ---------------------------------------------------------------------------------------------
# Vocabulary (real words for attributes; names are generated)
# ---------------------------------------------------------------------------------------------

_OCCUPATIONS: dict[str, tuple[str, ...]] = {
    "cartographer": ("cartographer", "mapmaker", "map maker"),
    "glassblower": ("glassblower", "glass blower"),
    "violinist": ("violinist", "violin player", "musician"),
    "architect": ("architect",),
    "botanist": ("botanist", "plant scientist"),
    "novelist": ("novelist", "writer", "author"),
    "chemist": ("chemist",),
    "sculptor": ("sculptor", "artist"),
    "surgeon": ("surgeon", "doctor", "physician"),
    "astronomer": ("astronomer",),
    "engineer": ("engineer",),
    "jeweller": ("jeweller", "jeweler"),
    "linguist": ("linguist",),
    "photographer": ("photographer",),
    "economist": ("economist",),
    "painter": ("painter", "artist"),
    "mathematician": ("mathematician",),
    "archivist": ("archivist",),
    "beekeeper": ("beekeeper", "apiarist"),
    "clockmaker": ("clockmaker", "watchmaker"),
    "poet": ("poet",),
    "shipwright": ("shipwright", "shipbuilder"),
    "geologist": ("geologist",),
    "historian": ("historian",),
    "playwright": ("playwright", "dramatist"),
    "pharmacist": ("pharmacist", "chemist"),
    "weaver": ("weaver",),
    "diplomat": ("diplomat",),
    "physicist": ("physicist",),
    "cellist": ("cellist", "cello player", "musician"),
}

_INDUSTRIES: dict[str, tuple[str, ...]] = {
    "shipbuilding": ("shipbuilding",),
    "textile": ("textile", "textiles"),
    "glassware": ("glassware", "glass"),
    "software": ("software",),
    "brewing": ("brewing", "beer"),
    "pharmaceutical": ("pharmaceutical", "pharmaceuticals"),
    "publishing": ("publishing",),
    "mining": ("mining",),
    "ceramics": ("ceramics", "pottery"),
    "aviation": ("aviation",),
    "fertiliser": ("fertiliser", "fertilizer"),
    "telecommunications": ("telecommunications", "telecom"),
    "furniture": ("furniture",),
    "confectionery": ("confectionery", "sweets"),
    "logistics": ("logistics", "shipping"),
    "insurance": ("insurance",),
}

_GENRES: dict[str, tuple[str, ...]] = {
    "folk rock": ("folk rock",),
    "synthpop": ("synthpop", "synth pop", "synth-pop"),
    "jazz fusion": ("jazz fusion",),
    "post-punk": ("post-punk", "post punk"),
    "bluegrass": ("bluegrass",),
    "shoegaze": ("shoegaze",),
    "ska": ("ska",),
    "chamber pop": ("chamber pop",),
    "doom metal": ("doom metal",),
    "surf rock": ("surf rock",),
    "dream pop": ("dream pop",),
    "hard bop": ("hard bop",),
}

_CITY_FEATURES = (
    "covered markets", "stone bridges", "glass towers", "lantern parade", "old harbour",
    "botanical gardens", "tram network", "clock tower", "salt marshes", "hillside vineyards",
    "painted houses", "cathedral organ",
)
_REGIONS = ("north", "south", "east", "west", "centre", "far north", "south-east", "north-west")

_COMPANY_SUFFIXES = ("Works", "Industries", "Holdings", "Group", "Company", "Labs", "Foundry", "Mills", "Trading")
_BAND_NOUNS = ("Lanterns", "Orchards", "Sparrows", "Engines", "Tides", "Mirrors", "Harbours", "Comets", "Ferns", "Kites")
_UNIVERSITY_KINDS = ("Institute", "College", "Academy", "Polytechnic", "University")

# Words a generated name must never equal (template words and common English words); names
# shorter than five letters are rejected anyway.
_RESERVED = frozenset(
    (
        "river", "company", "group", "works", "mills", "foundry", "trading", "holdings", "industries",
        "institute", "college", "academy", "university", "polytechnic", "festival", "accord", "flood",
        "exhibition", "founded", "capital", "currency", "language", "country", "singer", "rector",
        "first", "north", "south", "centre", "their", "woman", "women",
    )
)

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

_PRONOUNS: dict[str, tuple[str, str, str]] = {
    # kind -> (subject at sentence start, object, possessive)
    "company": ("The company", "the company", "its"),
    "band": ("The band", "the band", "its"),
    "city": ("The city", "the city", "its"),
    "country": ("The country", "the country", "its"),
    "river": ("The river", "the river", "its"),
    "university": ("The institution", "the institution", "its"),
}


@dataclass
class _Entity:
    kind: str
    name: str
    aliases: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    passages: list[_Passage] = field(default_factory=list)
    gender: str = ""

    def fact_passage(self, fact: str) -> _Passage:
        for p in self.passages:
            if fact in p.facts:
                return p
        raise KeyError(f"{self.name}: no passage states {fact!r}")  # a generator bug


@dataclass
class _Passage:
    title: str
    text: str
    facts: frozenset[str]
    entity: _Entity | None
    id: str = ""

    @property
    def full(self) -> str:
        return f"{self.title}\n{self.text}"


@dataclass
class _Candidate:
    template: str
    question: str
    golds: tuple[str, ...]
    subject: _Entity
    gold_passages: tuple[_Passage, ...]
    bridge: _Entity | None = None
    decomposition: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "z", "sk", "vr", "j", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "th", "m", "nd", "sk", "v", "rn", "lt")


class _Names:
    """Generates pseudo-words; every distinctive word is used once in the whole world."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3), endings: tuple[str, ...] = ("",)) -> str:
        rng = self.rng
        for _ in range(10_000):
            n = rng.randint(*syllables)
            parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)]
            w = "".join(parts) + rng.choice(_CODAS) + rng.choice(endings)
            low = w.lower()
            if len(low) < 5 or len(low) > 11 or low in self.used or low in _RESERVED:
                continue
            if any(c * 3 in low for c in "abcdefghijklmnopqrstuvwxyz"):
                continue
            self.used.add(low)
            return w[0].upper() + w[1:]
        raise RuntimeError("name space exhausted")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# World
# ---------------------------------------------------------------------------------------------


def _kind_counts(n_entities: int) -> dict[str, int]:
    counts = {k: max(minimum, round(share * n_entities)) for k, (share, minimum) in _KIND_SHARES.items()}
    counts["person"] = n_entities - sum(counts.values())
    return counts


def _build_world(rng: random.Random, names: _Names, n_entities: int) -> dict[str, list[_Entity]]:
    counts = _kind_counts(n_entities)
    world: dict[str, list[_Entity]] = {}

    countries = []
    for _ in range(counts["country"]):
        name = names.word((2, 2), ("ia", "and", "ora", "esh", "ovia", "istan", "ary"))
        lang = names.word((2, 2), ("ic", "ese", "ish", "ian"))
        currency = names.word((1, 2), ("el", "ar", "o", "")).lower()
        countries.append(_Entity("country", name, (name,), {
            "language": lang, "currency": currency, "independence": rng.randint(1620, 1985),
        }))
    world["country"] = countries

    cities = []
    for i in range(counts["city"]):
        name = names.word((1, 3), ("", "", "vik", "holm", "mouth", "stad", "ford", "grad"))
        # Every country gets at least one city (its capital); the rest are spread at random.
        country = countries[i] if i < len(countries) else rng.choice(countries)
        cities.append(_Entity("city", name, (name,), {
            "country": country, "founded": rng.randint(880, 1890),
            "population": rng.randrange(8_000, 2_400_000, 100), "feature": rng.choice(_CITY_FEATURES),
            "region": rng.choice(_REGIONS),
        }))
    world["city"] = cities
    for i, country in enumerate(countries):
        country.attrs["capital"] = cities[i]

    universities = []
    for _ in range(counts["university"]):
        base = names.word((2, 3))
        kind = rng.choice(_UNIVERSITY_KINDS)
        name = f"{base} {kind}"
        universities.append(_Entity("university", name, (name,), {"city": rng.choice(cities)}))
    world["university"] = universities

    people = []
    for _ in range(counts["person"]):
        first = names.word((1, 2), ("", "", "a", "o", "en", "is"))
        last = names.word((2, 3), ("", "sen", "ova", "ick", "ard", "well", "ski", "ez"))
        gender = rng.choice(("f", "m"))
        name = f"{first} {last}"
        attrs: dict[str, Any] = {
            "birth_year": rng.randint(1820, 1985), "birth_city": rng.choice(cities),
            "occupation": rng.choice(sorted(_OCCUPATIONS)),
        }
        if rng.random() < 0.6:
            attrs["university"] = rng.choice(universities)
        people.append(_Entity("person", name, (name,), attrs, gender=gender))
    world["person"] = people

    # Roles: founders, lead singers and rectors are distinct people while there are enough.
    pool = people[:]
    rng.shuffle(pool)
    cursor = 0

    def next_person() -> _Entity:
        nonlocal cursor
        p = pool[cursor % len(pool)]
        cursor += 1
        return p

    companies = []
    for _ in range(counts["company"]):
        base = names.word((2, 3))
        name = f"{base} {rng.choice(_COMPANY_SUFFIXES)}"
        founder = next_person()
        companies.append(_Entity("company", name, (name, base), {
            "founder": founder, "founded": min(2020, founder.attrs["birth_year"] + rng.randint(22, 50)),
            "hq": rng.choice(cities), "industry": rng.choice(sorted(_INDUSTRIES)),
        }))
    world["company"] = companies

    bands = []
    for _ in range(counts["band"]):
        name = f"{names.word((2, 2))} {rng.choice(_BAND_NOUNS)}"
        singer = next_person()
        bands.append(_Entity("band", name, (name,), {
            "singer": singer, "formed": min(2021, singer.attrs["birth_year"] + rng.randint(17, 30)),
            "origin": rng.choice(cities), "genre": rng.choice(sorted(_GENRES)),
        }))
    world["band"] = bands

    for uni in universities:
        rector = next_person()
        uni.attrs["rector"] = rector
        uni.attrs["founded"] = min(2005, rector.attrs["birth_year"] + rng.randint(30, 55))

    seas = [names.word((2, 2)) + " Sea" for _ in range(max(2, counts["river"] // 4))]
    rivers = []
    for _ in range(counts["river"]):
        base = names.word((1, 2))
        name = f"{base} River"
        rivers.append(_Entity("river", name, (name, base), {
            "source": rng.choice(cities), "length": rng.randint(40, 1900), "mouth": rng.choice(seas),
        }))
    world["river"] = rivers
    return world


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


# ---------------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------------

# A fact sentence: (fact keys it states, template choices).  Placeholders: {S} subject at the
# start of a sentence, {o} object form, {P} capitalised possessive, plus attribute values.
_FactSpec = tuple[frozenset[str], tuple[str, ...]]


def _fact_specs(e: _Entity) -> tuple[list[_FactSpec], dict[str, str]]:
    a = e.attrs
    if e.kind == "person":
        occ = a["occupation"]
        specs: list[_FactSpec] = [
            (frozenset({"birth_year", "birth_city"}), (
                "{S} was born in {city} in {year}.",
                "{S} was born in {year} in the city of {city}.",
                "{S} was born in {city} in the year {year} and spent a quiet childhood there.",
            )),
            (frozenset({"occupation"}), (
                "{S} works as {a_occ}.",
                "{S} is {a_occ} by profession.",
                "{S} made a living as {a_occ} for most of {p} life.",
            )),
        ]
        values = {"city": a["birth_city"].name, "year": str(a["birth_year"]), "a_occ": _article(occ)}
        if "university" in a:
            specs.append((frozenset({"university"}), (
                "{S} studied at {uni}.",
                "{S} attended {uni} as a young adult.",
            )))
            values["uni"] = a["university"].name
        return specs, values
    if e.kind == "city":
        return [
            (frozenset({"country"}), (
                "{S} is a city in the {region} of {country}.",
                "{S} is a city located in {country}.",
                "{S} lies in the {region} of {country}.",
            )),
            (frozenset({"founded"}), (
                "{S} was founded in {year} as a small trading post.",
                "{S} was founded in {year}.",
            )),
            (frozenset({"population"}), ("{S} has about {pop} inhabitants.", "{P} population is roughly {pop}.")),
            (frozenset({"feature"}), ("{S} is known for its {feature}.", "Visitors come to {o} for its {feature}.")),
        ], {
            "country": a["country"].name, "region": a["region"], "year": str(a["founded"]),
            "pop": f"{a['population']:,}", "feature": a["feature"],
        }
    if e.kind == "country":
        return [
            (frozenset({"capital"}), ("The capital of {o} is {cap}.", "{S} is governed from its capital, {cap}.")),
            (frozenset({"language"}), (
                "The official language of {o} is {lang}.",
                "{S} has {lang} as its official language.",
            )),
            (frozenset({"currency"}), ("{P} currency is the {cur}.", "{S} pays in the {cur}, its national currency.")),
            (frozenset({"independence"}), ("{S} became independent in {year}.", "{S} gained independence in {year}.")),
        ], {
            "cap": a["capital"].name, "lang": a["language"], "cur": a["currency"], "year": str(a["independence"]),
        }
    if e.kind == "company":
        return [
            (frozenset({"industry"}), ("{S} is {a_ind} company.", "{S} operates in the {ind} industry.")),
            (frozenset({"founder"}), (
                "{S} was founded by {founder}.",
                "{P} founder is {founder}.",
                "{S} was started by {founder} with a small family loan.",
            )),
            (frozenset({"founded"}), ("{S} was established in {year}.", "{S} has been in business since {year}.")),
            (frozenset({"hq"}), ("{S} is headquartered in {hq}.", "{P} head office is in {hq}.")),
        ], {
            "a_ind": _article(a["industry"]), "ind": a["industry"], "founder": a["founder"].name,
            "year": str(a["founded"]), "hq": a["hq"].name,
        }
    if e.kind == "band":
        return [
            (frozenset({"origin"}), ("{S} is a band from {city}.", "{S} is a group that started out in {city}.")),
            (frozenset({"singer"}), ("{P} lead singer is {singer}.", "{S} is fronted by lead singer {singer}.")),
            (frozenset({"formed"}), ("{S} was formed in {year}.", "{S} got together in {year}.")),
            (frozenset({"genre"}), ("{S} plays {genre}.", "{S} is best known for its {genre} sound.")),
        ], {"city": a["origin"].name, "singer": a["singer"].name, "year": str(a["formed"]), "genre": a["genre"]}
    if e.kind == "river":
        return [
            (frozenset({"source"}), ("{S} rises near {city}.", "{P} source lies close to {city}.")),
            (frozenset({"length"}), ("{S} is {n} km long.", "{S} runs for {n} km from source to mouth.")),
            (frozenset({"mouth"}), ("{S} flows into the {sea}.", "{S} empties into the {sea}.")),
        ], {"city": a["source"].name, "n": str(a["length"]), "sea": a["mouth"]}
    if e.kind == "university":
        return [
            (frozenset({"city"}), ("{S} is located in {city}.", "{S} has its main campus in {city}.")),
            (frozenset({"founded"}), ("{S} was founded in {year}.", "{S} opened its doors in {year}.")),
            (frozenset({"rector"}), ("{P} first rector was {rector}.", "The first rector of {o} was {rector}.")),
        ], {"city": a["city"].name, "year": str(a["founded"]), "rector": a["rector"].name}
    raise ValueError(e.kind)  # pragma: no cover


_FILLERS: dict[str, tuple[str, ...]] = {
    "person": (
        "{S} is remembered by colleagues as patient and meticulous.",
        "{S} kept detailed notebooks that are now held in a private collection.",
        "{S} rarely gave interviews and preferred to let the work speak for itself.",
        "{S} travelled widely as a young adult before settling down.",
        "{S} was once described by a critic as quietly ambitious.",
        "{S} mentored a number of younger practitioners over the years.",
        "{S} enjoyed long walks and collecting old postcards.",
        "{S} received several regional honours during a long career.",
        "Friends recall that {o} could talk for hours about almost any subject.",
        "{P} letters, published after a long delay, reveal a dry sense of humour.",
        "{S} spent several summers working in a small mountain village.",
        "{S} was an early riser who did most of the day's work before breakfast.",
        "A short documentary about {o} was shown on regional television.",
        "{S} served on the boards of two charitable trusts.",
        "{P} portrait hangs in the reading room of a local library.",
        "{S} learned three languages and read widely in each of them.",
    ),
    "city": (
        "{S} has a mild climate with wet winters and warm summers.",
        "{S} attracts many visitors in the summer months.",
        "{S} has a small but busy railway station.",
        "{P} old quarter is crossed by narrow lanes and small squares.",
        "Local historians have written several accounts of {o}.",
        "{S} hosts a weekly market that draws traders from the surrounding villages.",
        "{P} football club has a loyal following.",
        "{S} expanded rapidly during the last century.",
        "{P} town hall was rebuilt after a fire destroyed the original building.",
        "{S} is surrounded by farmland, orchards and low wooded hills.",
        "{S} has several museums, a concert hall and a large public park.",
        "The streets of {o} are busiest on market days and public holidays.",
        "{S} is twinned with towns in several neighbouring regions.",
        "{P} economy depends on trade, small workshops and tourism.",
        "Many residents of {o} commute by bicycle.",
        "{S} has a reputation for hearty food and strong coffee.",
    ),
    "country": (
        "{S} is a parliamentary republic with a small standing army.",
        "{P} economy relies on farming, fishing and trade.",
        "{S} has a long coastline dotted with fishing villages.",
        "{P} national holiday is celebrated with fireworks and music.",
        "{S} is divided into a dozen provinces.",
        "{P} mountains are popular with hikers in summer.",
        "{S} has a temperate climate with distinct seasons.",
        "{P} parliament meets in a former royal palace.",
        "{S} is known abroad for its wool, cheese and timber.",
        "{P} flag shows three horizontal bands and a star.",
        "{S} has a literacy rate close to one hundred percent.",
        "{S} maintains embassies in most neighbouring states.",
        "{P} railway network links all of the larger towns.",
        "{S} hosts a well-attended folk music competition each year.",
    ),
    "company": (
        "{S} employs staff across several regional offices.",
        "{S} publishes an annual report that is read closely by investors.",
        "{S} has weathered several economic downturns.",
        "{S} is privately held and rarely discusses its finances.",
        "{P} logo has changed only once in its history.",
        "{S} sponsors a number of local charities.",
        "{S} was restructured after a difficult decade.",
        "{S} exports a large share of its products to neighbouring markets.",
        "{S} runs an apprenticeship scheme for school leavers.",
        "{P} products are sold through a network of independent dealers.",
        "{S} has been the subject of several business school case studies.",
        "{S} opened a small museum about its own history.",
        "{P} workforce is represented by a long-established trade union.",
        "{S} invests a steady share of its revenue in research.",
    ),
    "band": (
        "{S} has released several albums to warm reviews.",
        "{S} tours regularly and is known for long live sets.",
        "{P} early recordings were made in a converted garage.",
        "Critics have praised {o} for its inventive arrangements.",
        "{S} went on a long hiatus before returning with new material.",
        "{P} fan club publishes a small newsletter.",
        "{S} has changed drummers several times over the years.",
        "{P} second album is often named as its best work.",
        "{S} recorded a live album during a sold-out winter tour.",
        "{S} is known for elaborate stage lighting and costumes.",
        "{P} songs have appeared in several films and advertisements.",
        "{S} signed with an independent label after years of self-released records.",
        "{S} rarely plays its early singles in concert.",
        "{P} music videos are usually filmed in a single take.",
    ),
    "river": (
        "{S} is popular with anglers and canoeists.",
        "{P} banks are lined with willows and small meadows.",
        "{S} floods in some springs after heavy rain.",
        "Several old mills once stood along {o}.",
        "{S} is crossed by a number of stone and iron bridges.",
        "{P} waters are home to trout and otters.",
        "{S} freezes over in unusually cold winters.",
        "{P} lower course is navigable by small barges.",
        "{S} feeds a chain of reservoirs that supply drinking water.",
        "A long-distance footpath follows {o} for much of its course.",
    ),
    "university": (
        "{S} offers degrees in the sciences and the humanities.",
        "{S} has a large library with many rare manuscripts.",
        "{P} students run a well-known debating society.",
        "{S} is organised into several faculties.",
        "{S} admits students from across the region.",
        "{P} main building has a distinctive copper roof.",
        "{S} runs an observatory on a nearby hill.",
        "{P} botanical garden is open to the public.",
        "{S} hosts a summer school for visiting researchers.",
        "{P} alumni include several well-known writers and engineers.",
    ),
}


def _forms(e: _Entity, named: bool) -> dict[str, str]:
    if named:
        poss = f"{e.name}'" if e.name.endswith("s") else f"{e.name}'s"
        if e.kind == "river":
            return {"S": f"The {e.name}", "o": f"the {e.name}", "P": f"The {poss}", "p": f"the {poss}"}
        return {"S": e.name, "o": e.name, "P": poss, "p": poss}
    if e.kind == "person":
        s, o, p = ("She", "her", "her") if e.gender == "f" else ("He", "him", "his")
    else:
        s, o, p = _PRONOUNS[e.kind]
    return {"S": s, "o": o, "P": p[0].upper() + p[1:], "p": p}


def _words(text: str) -> int:
    return len(text.split())


def _render(template: str, e: _Entity, named: bool, values: dict[str, str]) -> str:
    return template.format(**_forms(e, named), **values)


def _entity_passages(rng: random.Random, e: _Entity, n_passages: int) -> list[_Passage]:
    specs, values = _fact_specs(e)
    # Keep the first fact spec first in passage one; split the rest across the passages.
    rest = specs[1:]
    rng.shuffle(rest)
    if n_passages == 1:
        groups = [[specs[0], *rest]]
    else:
        cut = rng.randint(1, max(1, len(rest) - 1)) if len(rest) > 1 else len(rest)
        groups = [[specs[0], *rest[:cut]], rest[cut:]]
        if not groups[1]:
            groups = [groups[0]]
    fillers = list(_FILLERS[e.kind])
    rng.shuffle(fillers)
    passages = []
    for group in groups:
        sentences: list[str] = []
        facts: set[str] = set()
        for keys, templates in group:
            sentences.append(_render(rng.choice(templates), e, not sentences, values))
            facts |= keys
        target = rng.randint(MIN_WORDS + 5, 75)
        while fillers and _words(" ".join(sentences)) < target:
            sentence = _render(fillers.pop(), e, False, values)
            if _words(" ".join(sentences)) + _words(sentence) <= MAX_WORDS:
                sentences.append(sentence)
        passages.append(_Passage(e.name, " ".join(sentences), frozenset(facts), e))
    return passages


_DISTRACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("{w} Festival", (
        "The {w} Festival is an annual gathering held each autumn in {city}.",
        "Past editions have featured concerts by {band} and public talks by {person}.",
        "The organisers regularly thank {company} for lending equipment and volunteers.",
        "Tickets usually sell out within days, and many visitors camp in the fields nearby.",
        "The festival closes with a procession through the old town.",
    )),
    ("{w} Accord", (
        "The {w} Accord is a trade agreement negotiated in {city}.",
        "Delegations from {country} and {country2} spent several weeks drafting its terms.",
        "{person} attended the final session as an observer.",
        "The accord lowered tariffs on grain, timber and wool, and it is still cited in disputes.",
        "Critics argued that it favoured large exporters such as {company}.",
    )),
    ("{w} Flood", (
        "The {w} Flood was a severe flood that struck the valley of the {river}.",
        "Water reached the outskirts of {city} within a single night.",
        "{company} lent boats and trucks to the rescue effort, and {person} helped to organise shelters.",
        "Rebuilding took several years, and new embankments were raised along the banks.",
    )),
    ("{w} Exhibition", (
        "The {w} Exhibition was a touring show of paintings, maps and instruments.",
        "It opened in {city} and later travelled to {city2}.",
        "Among the lenders were {person} and {company}, and {band} played at the opening night.",
        "Reviewers praised the catalogue, which remains a prized item among collectors.",
    )),
    ("{w} Cup", (
        "The {w} Cup is an amateur football competition between clubs from {city} and {city2}.",
        "The trophy was designed by a local workshop and is kept at the town hall between matches.",
        "{person} presented the cup at one memorable final, and {company} has sponsored the shirts.",
        "Matches draw large crowds and are broadcast on regional radio.",
    )),
    ("{w} Fair", (
        "The {w} Fair is a craft and food fair held every spring in {city}.",
        "Stalls sell pottery, cheese, honey and woven goods.",
        "{band} has played on its main stage, and {person} once judged its baking contest.",
        "The fair is run by volunteers and is free to enter.",
    )),
)


def _distractor(rng: random.Random, names: _Names, world: dict[str, list[_Entity]]) -> _Passage:
    title_t, sentences = rng.choice(_DISTRACTORS)
    cities = rng.sample(world["city"], 2)
    countries = rng.sample(world["country"], 2)
    values = {
        "w": names.word((2, 3)),
        "city": cities[0].name, "city2": cities[1].name,
        "country": countries[0].name, "country2": countries[1].name,
        "person": rng.choice(world["person"]).name, "company": rng.choice(world["company"]).name,
        "band": rng.choice(world["band"]).name, "river": rng.choice(world["river"]).name,
    }
    text = " ".join(s.format(**values) for s in sentences)
    return _Passage(title_t.format(**values), text, frozenset(), None)


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def _occupation_golds(occ: str) -> tuple[str, ...]:
    return _OCCUPATIONS[occ]


def _one_hop(e: _Entity) -> list[_Candidate]:
    a = e.attrs
    out: list[_Candidate] = []

    def add(template: str, question: str, golds: tuple[str, ...], fact: str) -> None:
        out.append(_Candidate(template, question, golds, e, (e.fact_passage(fact),)))

    n = e.name
    if e.kind == "person":
        add("person_occupation", f"What is the occupation of {n}?", _occupation_golds(a["occupation"]), "occupation")
        add("person_birth_city", f"In which city was {n} born?", (a["birth_city"].name,), "birth_city")
        add("person_birth_year", f"In what year was {n} born?", (str(a["birth_year"]),), "birth_year")
        if "university" in a:
            add("person_university", f"Where did {n} study?", (a["university"].name,), "university")
    elif e.kind == "city":
        add("city_country", f"In which country is {n} located?", (a["country"].name,), "country")
        add("city_founded", f"In what year was {n} founded?", (str(a["founded"]),), "founded")
    elif e.kind == "country":
        add("country_capital", f"What is the capital of {n}?", (a["capital"].name,), "capital")
        add("country_language", f"What is the official language of {n}?",
            (a["language"], f"{a['language']} language"), "language")
        add("country_currency", f"What is the currency of {n}?", (a["currency"], f"{a['currency']}s"), "currency")
        add("country_independence", f"In what year did {n} become independent?", (str(a["independence"]),),
            "independence")
    elif e.kind == "company":
        add("company_founder", f"Who founded {n}?", (a["founder"].name,), "founder")
        add("company_founded", f"When was {n} founded?", (str(a["founded"]),), "founded")
        add("company_hq", f"In which city is {n} headquartered?", (a["hq"].name,), "hq")
        add("company_industry", f"In which industry does {n} operate?", _INDUSTRIES[a["industry"]], "industry")
    elif e.kind == "band":
        add("band_singer", f"Who is the lead singer of {n}?", (a["singer"].name,), "singer")
        add("band_formed", f"In what year was {n} formed?", (str(a["formed"]),), "formed")
        add("band_origin", f"Which city is the band {n} from?", (a["origin"].name,), "origin")
        add("band_genre", f"What kind of music does {n} play?", _GENRES[a["genre"]], "genre")
    elif e.kind == "river":
        km = a["length"]
        add("river_length", f"How long is the {n}?", (f"{km} km", f"{km} kilometres", f"{km} kilometers"), "length")
        add("river_source", f"Near which city does the {n} rise?", (a["source"].name,), "source")
        sea = a["mouth"]
        add("river_mouth", f"Into which sea does the {n} flow?", (sea, sea.removesuffix(" Sea")), "mouth")
    elif e.kind == "university":
        add("university_city", f"In which city is {n} located?", (a["city"].name,), "city")
        add("university_founded", f"When was {n} founded?", (str(a["founded"]),), "founded")
        add("university_rector", f"Who was the first rector of {n}?", (a["rector"].name,), "rector")
    return out


# 2-hop: (template, subject kind, subject->bridge attribute, bridge fact, question, answer fn)
_TwoHopSpec = tuple[str, str, str, str, str, str, Callable[[_Entity], tuple[str, ...]]]

_TWO_HOP: tuple[_TwoHopSpec, ...] = (
    ("company_founder_birth_city", "company", "founder", "birth_city",
     "In which city was the founder of {n} born?", "In which city was {b} born?",
     lambda b: (b.attrs["birth_city"].name,)),
    ("company_founder_birth_year", "company", "founder", "birth_year",
     "In what year was the founder of {n} born?", "In what year was {b} born?",
     lambda b: (str(b.attrs["birth_year"]),)),
    ("company_founder_occupation", "company", "founder", "occupation",
     "What is the occupation of the person who founded {n}?", "What is the occupation of {b}?",
     lambda b: _occupation_golds(b.attrs["occupation"])),
    ("company_hq_country", "company", "hq", "country",
     "In which country is {n} headquartered?", "In which country is {b} located?",
     lambda b: (b.attrs["country"].name,)),
    ("band_singer_birth_city", "band", "singer", "birth_city",
     "Where was the lead singer of {n} born?", "In which city was {b} born?",
     lambda b: (b.attrs["birth_city"].name,)),
    ("band_singer_birth_year", "band", "singer", "birth_year",
     "When was the lead singer of {n} born?", "In what year was {b} born?",
     lambda b: (str(b.attrs["birth_year"]),)),
    ("band_singer_occupation", "band", "singer", "occupation",
     "What does the lead singer of {n} do for a living?", "What is the occupation of {b}?",
     lambda b: _occupation_golds(b.attrs["occupation"])),
    ("band_origin_country", "band", "origin", "country",
     "Which country does the band {n} come from?", "In which country is {b} located?",
     lambda b: (b.attrs["country"].name,)),
    ("person_birth_country", "person", "birth_city", "country",
     "In which country was {n} born?", "In which country is {b} located?",
     lambda b: (b.attrs["country"].name,)),
    ("person_university_city", "person", "university", "city",
     "In which city is the institution where {n} studied?", "In which city is {b} located?",
     lambda b: (b.attrs["city"].name,)),
    ("river_source_country", "river", "source", "country",
     "In which country does the {n} rise?", "In which country is {b} located?",
     lambda b: (b.attrs["country"].name,)),
    ("university_rector_birth_city", "university", "rector", "birth_city",
     "Where was the first rector of {n} born?", "In which city was {b} born?",
     lambda b: (b.attrs["birth_city"].name,)),
    ("university_country", "university", "city", "country",
     "In which country is {n}?", "In which country is {b} located?",
     lambda b: (b.attrs["country"].name,)),
    ("city_country_capital", "city", "country", "capital",
     "What is the capital of the country where {n} lies?", "What is the capital of {b}?",
     lambda b: (b.attrs["capital"].name,)),
    ("city_country_language", "city", "country", "language",
     "What is the official language of the country in which {n} is located?",
     "What is the official language of {b}?",
     lambda b: (b.attrs["language"], f"{b.attrs['language']} language")),
    ("city_country_currency", "city", "country", "currency",
     "What currency is used in the country where {n} is located?", "What is the currency of {b}?",
     lambda b: (b.attrs["currency"], f"{b.attrs['currency']}s")),
)

# The question asked about the subject to reach the bridge, per subject->bridge attribute.
_FIRST_HOP = {
    ("company", "founder"): "Who founded {n}?",
    ("company", "hq"): "In which city is {n} headquartered?",
    ("band", "singer"): "Who is the lead singer of {n}?",
    ("band", "origin"): "Which city is the band {n} from?",
    ("person", "birth_city"): "In which city was {n} born?",
    ("person", "university"): "Where did {n} study?",
    ("river", "source"): "Near which city does the {n} rise?",
    ("university", "rector"): "Who was the first rector of {n}?",
    ("university", "city"): "In which city is {n} located?",
    ("city", "country"): "In which country is {n} located?",
}


def _two_hop(e: _Entity) -> list[_Candidate]:
    out: list[_Candidate] = []
    for template, kind, link, fact, q, sub_q, answer in _TWO_HOP:
        if e.kind != kind or link not in e.attrs:
            continue
        bridge: _Entity = e.attrs[link]
        golds = answer(bridge)
        cand = _Candidate(
            template, q.format(n=e.name), golds, e, (e.fact_passage(link), bridge.fact_passage(fact)), bridge,
            ((_FIRST_HOP[(kind, link)].format(n=e.name), bridge.name), (sub_q.format(b=bridge.name), golds[0])),
        )
        if _two_hop_ok(cand):
            out.append(cand)
    return out


def _two_hop_ok(c: _Candidate) -> bool:
    """The answer is absent from every subject passage; the subject is absent from the bridge's."""
    if c.bridge is None:
        return False
    subject_texts = [p.full for p in c.subject.passages]
    bridge_texts = [p.full for p in c.bridge.passages]
    if answer_in_docs(c.golds, subject_texts):
        return False
    if answer_in_docs(c.subject.aliases, bridge_texts):
        return False
    if any(span_match(c.question, alias) for alias in c.bridge.aliases):
        return False
    return span_match(c.gold_passages[0].full, c.bridge.name) and span_match(c.gold_passages[1].full, c.golds[0])


def _pick(rng: random.Random, candidates: list[_Candidate], n: int, what: str) -> list[_Candidate]:
    """Up to ``n`` candidates, balanced across templates (round robin over shuffled groups)."""
    if n > len(candidates):
        raise InvalidArgument(f"only {len(candidates)} {what} questions can be made from this world; asked for {n}")
    groups: dict[str, list[_Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.template, []).append(c)
    order = sorted(groups)
    rng.shuffle(order)
    for key in order:
        rng.shuffle(groups[key])
    picked: list[_Candidate] = []
    while len(picked) < n:
        for key in order:
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop())
    rng.shuffle(picked)
    return picked


def _question_rows(prefix: str, hops: int, picked: list[_Candidate], seed: int) -> list[dict[str, Any]]:
    rows = []
    for i, c in enumerate(picked):
        meta: dict[str, Any] = {
            "hops": hops,
            "template": c.template,
            "subject": c.subject.name,
            "subject_kind": c.subject.kind,
            "gold_passage_ids": [p.id for p in c.gold_passages],
        }
        if c.bridge is not None:
            meta["bridge"] = c.bridge.name
            meta["decomposition"] = [{"question": q, "answer": a} for q, a in c.decomposition]
        meta["seed"] = seed
        rows.append({"id": f"{prefix}-{i:04d}", "question": c.question, "golden_answers": list(c.golds),
                     "metadata": meta})
    return rows


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def synthesize(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    n_entities: int = 300,
    n_questions: int = 100,
    distractor_ratio: float = 0.6,
) -> dict[str, Any]:
    """Generate the fictional world into ``out_dir`` and return the manifest (also written).

    ``n_questions`` is per file (1-hop and 2-hop); ``distractor_ratio`` × ``n_entities`` distractor
    passages are added to the entity passages.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an int, got {seed!r}")
    if n_entities < MIN_ENTITIES:
        raise InvalidArgument(f"n_entities must be >= {MIN_ENTITIES}, got {n_entities}")
    if n_questions < 1:
        raise InvalidArgument(f"n_questions must be >= 1, got {n_questions}")
    if not 0 <= distractor_ratio <= 5:
        raise InvalidArgument(f"distractor_ratio must be in [0, 5], got {distractor_ratio}")

    rng = random.Random(seed)
    names = _Names(rng)
    world = _build_world(rng, names, n_entities)
    kinds = ("country", "city", "person", "university", "company", "band", "river")
    two_passage_prob = {"person": 1.0, "company": 0.7, "band": 0.6, "country": 1.0, "city": 0.4,
                        "river": 0.0, "university": 0.0}

    passages: list[_Passage] = []
    for kind in kinds:
        for e in world[kind]:
            n_p = 2 if rng.random() < two_passage_prob[kind] else 1
            e.passages = _entity_passages(rng, e, n_p)
            passages.extend(e.passages)
    n_entity_passages = len(passages)
    n_distractors = round(distractor_ratio * n_entities)
    passages.extend(_distractor(rng, names, world) for _ in range(n_distractors))
    rng.shuffle(passages)
    width = max(5, len(str(len(passages))))
    for i, p in enumerate(passages):
        p.id = f"synth{seed}-{i:0{width}d}"

    one_hop = [c for kind in kinds for e in world[kind] for c in _one_hop(e)]
    two_hop = [c for kind in kinds for e in world[kind] for c in _two_hop(e)]
    picked1 = _pick(rng, one_hop, n_questions, "1-hop")
    picked2 = _pick(rng, two_hop, n_questions, "2-hop")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / CORPUS_FILE, ({"id": p.id, "contents": f'"{p.title}"\n{p.text}'} for p in passages))
    write_jsonl(out / ONE_HOP_FILE, _question_rows("synth_1hop", 1, picked1, seed))
    write_jsonl(out / TWO_HOP_FILE, _question_rows("synth_2hop", 2, picked2, seed))

    manifest: dict[str, Any] = {
        "generator": "s3core.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "params": {"n_entities": n_entities, "n_questions": n_questions, "distractor_ratio": distractor_ratio},
        "counts": {
            "entities": {kind: len(world[kind]) for kind in kinds},
            "entities_total": sum(len(world[kind]) for kind in kinds),
            "passages": len(passages),
            "entity_passages": n_entity_passages,
            "distractor_passages": n_distractors,
            "synth_1hop": len(picked1),
            "synth_2hop": len(picked2),
            "candidates_1hop": len(one_hop),
            "candidates_2hop": len(two_hop),
        },
        "files": {
            name: {"sha256": corpus_sha256(out / name), "bytes": (out / name).stat().st_size}
            for name in (CORPUS_FILE, ONE_HOP_FILE, TWO_HOP_FILE)
        },
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest
