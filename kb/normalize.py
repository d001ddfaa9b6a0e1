"""Text normalisation for Russian and English queries and phrasings.

Everything the matcher compares goes through :func:`tokens`: lower case, ё→е, punctuation
and emoji dropped, English contractions expanded ("didn't" → "did not"), British -ise
spelt -ize, stop words removed, Snowball stems.  :func:`fix_layout` first undoes
the classic keyboard-layout mistake ("ghbdtn" typed for "привет", "руддщ" for "hello"),
but only where the converted word is known and the original is not, so real Latin words
in a Russian query (product names, "wifi") stay untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, MutableMapping
from functools import lru_cache

import snowballstemmer

_EN_KEYS = "`qwertyuiop[]asdfghjkl;'zxcvbnm,./~QWERTYUIOP{}ASDFGHJKL:\"ZXCVBNM<>?"
_RU_KEYS = "ёйцукенгшщзхъфывапролджэячсмитьбю.ЁЙЦУКЕНГШЩЗХЪФЫВАПРОЛДЖЭЯЧСМИТЬБЮ,"
EN_TO_RU = str.maketrans(_EN_KEYS, _RU_KEYS)
RU_TO_EN = str.maketrans(_RU_KEYS, _EN_KEYS)

# Words that carry no topic.  Negations and question words that change the intent
# ("не", "not", "why") are deliberately kept.

def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS_EN = _wordset(
    """a an the i im ive me my mine myself we our ours you your yours he she it its they them
    their is are was were be been being am do does did doing to of in on at for with and or
    but so if then than as by from into about this that these those there here have has had
    having will would shall should can could may might must please hi hello hey thanks thank
    just also some any very really get got getting"""
)
STOP_WORDS_RU = _wordset(
    """и в во на с со к ко по за из от до о об у а но же ли бы то это этот эта эти этого
    я мне меня мой моя мои моё мое мы нас нам наш наша ты тебе тебя твой вы вас вам ваш
    ваша ваши он она оно они его ее её их им ему ей так вот уже еще ещё был была было были
    быть есть будет как-то пожалуйста здравствуйте привет добрый день спасибо просто очень
    тоже также всё все весь вообще подскажите скажите"""
)
STOP_WORDS = STOP_WORDS_EN | STOP_WORDS_RU

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CYRILLIC = re.compile(r"[а-я]")
_LATIN = re.compile(r"[a-z]")

_STEMMERS: dict[str, snowballstemmer.stemmer] = {}


def _stemmer(lang: str) -> Callable[[str], str]:
    if lang not in _STEMMERS:
        _STEMMERS[lang] = snowballstemmer.stemmer("russian" if lang == "ru" else "english")
    return _STEMMERS[lang].stemWord  # type: ignore[no-any-return]


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Snowball stem of one lower-case word, in the stemmer its script calls for."""
    if _CYRILLIC.search(word):
        return _stemmer("ru")(word)
    if _LATIN.search(word):
        return _stemmer("en")(word)
    return word


def clean(text: str) -> str:
    """Lower case, ё→е, apostrophes joined ("don't" → "dont")."""
    return text.lower().replace("ё", "е").replace("'", "").replace("’", "").replace("`", "")


# English contractions, written with or without the apostrophe (which clean() drops):
# "didn't" and "didnt" become "did not", so "not" is one feature however it is typed.
_CONTRACTIONS = {
    "cant": "can not", "cannot": "can not", "wont": "will not", "aint": "is not",
    "shant": "shall not", "im": "i am", "ive": "i have",
    "youre": "you are", "youve": "you have", "theyre": "they are", "theyve": "they have",
    "whats": "what is", "whos": "who is", "wheres": "where is", "hows": "how is",
    "whys": "why is", "thats": "that is", "theres": "there is",
    "lets": "let us", "shouldve": "should have", "wouldve": "would have",
    "couldve": "could have",
}
for _w in ("do", "does", "did", "is", "are", "was", "were", "has", "have", "had",
           "should", "would", "could", "must", "need"):
    _CONTRACTIONS[_w + "nt"] = _w + " not"
# British -ise/-isation spellings as US -ize ("recognised" / "recognized"); applied to
# the KB and the query alike, so a word that merely ends so ("promise") stays consistent.
_BRITISH = re.compile(r"^([a-z]{3,})is(e|ed|es|ing|ation|ations)$")
_BRITISH_ENDS = ("ise", "ised", "ises", "ising", "isation", "isations")


@lru_cache(maxsize=200_000)
def _fold(word: str) -> tuple[str, ...]:
    """One cleaned word as the words it stands for (contractions, spelling variants)."""
    full = _CONTRACTIONS.get(word)
    if full is not None:
        return tuple(full.split())
    if word.endswith(_BRITISH_ENDS):
        return (_BRITISH.sub(r"\1iz\2", word),)
    return (word,)


def words(text: str) -> list[str]:
    """The words of ``text`` after :func:`clean`; punctuation and emoji are dropped,
    English contractions expanded ("didn't" → "did not") and -ise spelt -ize."""
    return [x for w in _WORD.findall(clean(text)) for x in _fold(w)]


def tokens(text: str, *, keep_stop_words: bool = False) -> list[str]:
    """Stems of the content words of ``text``."""
    return [stem(w) for w in words(text) if keep_stop_words or w not in STOP_WORDS]


def analyse(text: str) -> tuple[list[str], list[bool]]:
    """Stems of all words of ``text`` and, per stem, whether it is a content word.

    One pass for the matcher, which uses both the content stems and the full sequence
    (stop words such as "how", "can", "why" help tell close intents apart in bigrams).
    """
    stems: list[str] = []
    content: list[bool] = []
    for w in words(text):
        stems.append(stem(w))
        content.append(w not in STOP_WORDS)
    return stems, content


def _score_chunk(chunk: str, vocabulary: Container[str]) -> int:
    """How many words of ``chunk`` the KB (or the stop-word lists) knows."""
    return sum(1 for w in words(chunk) if w in STOP_WORDS or stem(w) in vocabulary)


def fix_layout(
    text: str, vocabulary: Container[str], cache: MutableMapping[str, str] | None = None
) -> str:
    """Undo wrong-keyboard-layout typing, chunk by chunk (whitespace-separated).

    A chunk typed entirely in one script is converted to the other layout when the
    converted words are known (KB stems or stop words) and beat the original ones.
    Punctuation keys matter ("k.,jq" is "любой"), so chunks are converted before
    punctuation is stripped.  ``cache`` (per vocabulary) remembers each chunk's outcome.
    """
    out: list[str] = []
    for chunk in text.split():
        fixed = cache.get(chunk) if cache is not None else None
        if fixed is None:
            fixed = _fix_chunk(chunk, vocabulary)
            if cache is not None and len(cache) < _LAYOUT_CACHE_SIZE:
                cache[chunk] = fixed
        out.append(fixed)
    return " ".join(out)


_LAYOUT_CACHE_SIZE = 100_000


def _fix_chunk(chunk: str, vocabulary: Container[str]) -> str:
    low = chunk.lower().replace("ё", "е")
    if _LATIN.search(low) and not _CYRILLIC.search(low):
        table = EN_TO_RU
    elif _CYRILLIC.search(low) and not _LATIN.search(low):
        table = RU_TO_EN
    else:
        return chunk
    best, best_score = chunk, _score_chunk(chunk, vocabulary)
    if best_score and best_score == len(words(chunk)):
        return chunk  # every word is known as typed: not a layout mistake
    # Trailing sentence punctuation would become letters ("?"→","; "."→"ю"), so the
    # chunk is also tried with it kept as is.
    core = chunk.rstrip("?!.,")
    for conv in (chunk.translate(table), core.translate(table) + chunk[len(core) :]):
        score = _score_chunk(conv, vocabulary)
        if score > best_score:
            best, best_score = conv, score
    return best


def script_lang(text: str) -> str | None:
    """``ru`` or ``en`` by the script most letters are in; ``None`` without letters."""
    low = clean(text)
    ru = len(_CYRILLIC.findall(low))
    en = len(_LATIN.findall(low))
    if ru == en == 0:
        return None
    return "ru" if ru >= en else "en"
