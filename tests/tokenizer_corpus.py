"""A deterministic corpus of hard and ordinary texts for tokenizer parity tests.

`corpus(n, seed)` returns the hand-written `FIXED` cases first (each pins one known pitfall of CLIP's
cleaning or pre-tokenization), then random mixtures of the fragment pools below, transformed the way
real captions get mangled (HTML escaping, mojibake, decomposed accents, shouting, repetition).
Only `random.Random(seed)` is used, never sets or hashes, so the output is identical on every run.
"""
import html
import random
import unicodedata

CAPTIONS = [
    "a photo of a dog.",
    "A brown dog running on the beach at sunset",
    "Two people riding bikes down a rainy street in Paris.",
    "Close-up of a red apple on a wooden table",
    "An aerial view of New York City at night, with lights",
    "a black and white photo of an old man smiling",
    "Mount Fuji reflected in Lake Kawaguchi, spring 2019",
    "Kids playing soccer in the park (under-12 league)",
    "Vintage 1960s Ford Mustang - restored, for sale: $45,000!",
    "Screenshot of a Python traceback: KeyError: 'name'",
    "The Eiffel Tower; taken with an iPhone 12 Pro Max",
    "A bowl of ramen with chashu pork, egg & scallions",
    "Sunset over the Pacific Ocean -- photo by @jane_doe #travel",
    "Diagram of a 4-stroke engine cycle",
    "CAT SLEEPING ON A KEYBOARD LOL",
    "my cat's favourite box, she won't leave it",
    "they're building a new bridge; we've been waiting since '98",
    "a painting in the style of Van Gogh, oil on canvas, 73.7 cm x 92.1 cm",
    "Stock photo: business team meeting in a modern office",
    "a tabby cat on a windowsill, looking outside at the birds",
]

TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of the {}.",
    "itap of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "art of the {}.",
    "a photo of the small {}.",
    "a blurry photo of a {}.",
    "a sculpture of a {}.",
    "a tattoo of the {}.",
]

CLASS_NAMES = [
    "tench", "goldfish", "great white shark", "jack-o'-lantern", "Granny Smith",
    "hen-of-the-woods", "T-shirt", "yellow lady's slipper", "potter's wheel", "4x4",
    "Chihuahua", "crêpe", "café", "ski", "CD player", "3D printer",
]

SCRIPTS = [
    "一只猫坐在窗台上", "猫がソファで寝ている", "고양이가 소파에서 자고 있다", "قطة تجلس على النافذة",
    "חתול יושב על אדן החלון", "Кошка сидит на подоконнике", "बिल्ली खिड़की पर बैठी है",
    "แมวนั่งอยู่บนหน้าต่าง", "Μια γάτα κάθεται στο ΠΑΡΆΘΥΡΟ", "ΟΔΟΣ ΣΟΦΟΚΛΕΟΥΣ",
    "பூனை ஜன்னலில் அமர்ந்திருக்கிறது", "კატა ზის ფანჯარაზე", "Կատուն նստած է",
    "Con mèo ngồi trên cửa sổ", "İstanbul'da ılık bir gün", "Straße und STRASSE, ẞ",
    "ﬁnal ﬂight", "ＬＯＵＤ　ＮＯＩＳＥＳ", "ｶﾀｶﾅ", "ǅemal", "ΣΊΣΥΦΟΣ", "Ⅻ Ⅰ ⅷ",
]

EMOJI = [
    "🐶", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "❤️", "🧑🏿‍🚀", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "😀😃😄", "👩‍❤️‍💋‍👨", "✔", "☕️", "🤷‍♀️",
]

HTML_BITS = [
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "&quot;quoted&quot;", "&amp;amp;", "&amp;lt;",
    "&#x27;", "&nbsp;", "&eacute;", "P&EACUTE;REZ", "&hellip;", "&amp", "this&not that",
    "<b>bold</b> &amp; co", "&#8217;", "&#0;", "&#128512;", "&unknown;", "AT&T", "&&&",
]

ACCENTS = [
    "café", "cafe\u0301", "naïve", "nai\u0308ve", "Ångström", "résumé", "Zürich", "São Paulo",
    "Øresund", "Ærøskøbing", "ñandú", "Dvořák", "Łódź", "Crème Brûlée",
]

NUMBERS = [
    "1234567890", "3.14159", "1,000,000", "½", "²", "٣٤٥", "१२३", "①②", "１２３", "0x1F600",
    "2024-01-31", "12:30pm", "$19.99", "50%", "+49 30 1234567", "007",
]

PUNCTUATION = [
    "!!!", "?!?!", "...", "—", "–", "«guillemets»", "“quoted”", "‘single’", "(((", "$$$",
    "#hashtag", "@user", "http://example.com/a_b?c=d&e=f", "C++", "e-mail", "---", "...!!!???",
    "<|endoftext|>", "<|startoftext|>", "<start_of_text>", "<end_of_text>", "<END_OF_TEXT>",
    "¯\\_(ツ)_/¯", "~/.bashrc", "{}", "[x]",
]

CONTRACTIONS = [
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "WE'VE",
    "it’s", "don’t", "rock 'n' roll", "'sup", "the '90s", "y'all'd've", "O'Neill", "'s'", "''",
    "ma'am", "o'clock", "it\u02bcs", "'ſ", "can't't",
]

WHITESPACE = [
    " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u200b", "\u3000", "\u2028", "\u2029",
    "\u0085", "\x0b", "\x0c", "\x1c", "\u202f", "\ufeff", "\u2003", " \t \n ",
]

MOJIBAKE = [
    "cafÃ©", "â€™", "Ã¼ber", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Ð¼Ð¾Ñ\x81ÐºÐ²Ð°", "SÃ£o Paulo", "Ã\xa0 la carte", "voilÃ le travail", "ÃƒÂ©",
]

CONTROL = [
    "\x00", "\x07", "\x1b[31mred\x1b[0m", "\x7f", "\x85", "\x9c", "\u200e", "\u202e", "\ufffd",
    "\ud83d\ude00", "\ud83d", "\x01\x02\x03", "\u2066isolate\u2069", "\ufff9",
]

POOLS = [CAPTIONS, SCRIPTS, EMOJI, HTML_BITS, ACCENTS, NUMBERS, PUNCTUATION, CONTRACTIONS,
         WHITESPACE, MOJIBAKE, CONTROL]

SEPARATORS = [" ", " ", " ", "", "\t", "\n", "\r\n", "\u00a0", "  ", ", "]

FIXED = [
    "",
    " ",
    "   \t\n  ",
    "\u00a0\u3000\u2028",
    "!",
    "a",
    "A",
    "a photo of a cat",
    "a " * 75,  # exactly 75 BPE tokens: fits in 77 with SOT and EOT
    "a " * 76,  # one token too many
    "hello world " * 200,  # > 400 tokens
    "1" * 1100,  # every digit is its own token: > 1000 tokens
    "一只猫坐在窗台上。" * 40,  # one long run of CJK letters per sentence
    " ".join(CAPTIONS),
    "the quick brown fox jumps over the lazy dog " * 120,  # > 1000 tokens
    *[template.format(name) for template in TEMPLATES[:4] for name in CLASS_NAMES],
    *SCRIPTS, *EMOJI, *HTML_BITS, *ACCENTS, *NUMBERS, *PUNCTUATION, *CONTRACTIONS, *WHITESPACE,
    *MOJIBAKE, *CONTROL,
]


def _mojibake(text: str, rng: random.Random) -> str:
    """Re-decode UTF-8 bytes in a wrong single-byte encoding, as broken pipelines do."""
    encoding = rng.choice(["latin-1", "cp1252", "macroman"])
    return text.encode("utf-8", errors="surrogatepass").decode(encoding, errors="replace")


def _transform(text: str, rng: random.Random) -> str:
    """Apply one random real-world mangling (or none) to `text`."""
    kind = rng.randrange(12)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return text.title()
    if kind == 2:
        return html.escape(text)
    if kind == 3:
        return html.escape(html.escape(text))
    if kind == 4:
        return _mojibake(text, rng)
    if kind == 5:
        return unicodedata.normalize("NFD", text)
    if kind == 6:
        return rng.choice(WHITESPACE) + text + rng.choice(WHITESPACE)
    if kind == 7 and rng.random() < 0.3:
        return (text + " ") * rng.randint(10, 150)  # long texts, some > 1000 tokens
    return text


def _caption_like(rng: random.Random) -> str:
    """A plain caption or a filled prompt template (most real inputs look like this)."""
    if rng.random() < 0.5:
        return rng.choice(CAPTIONS)
    return rng.choice(TEMPLATES).format(rng.choice(CLASS_NAMES))


def _mixture(rng: random.Random) -> str:
    """1 to 6 fragments from random pools, joined by random separators, then mangled."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        pool = rng.choice(POOLS)
        parts.append(rng.choice(pool))
        parts.append(rng.choice(SEPARATORS))
    return _transform("".join(parts[:-1]), rng)


def corpus(n: int = 2000, seed: int = 0) -> list:
    """Return `n` texts: the `FIXED` cases first, then seeded captions (40%) and mixtures (60%)."""
    rng = random.Random(seed)
    texts = list(FIXED[:n])
    while len(texts) < n:
        texts.append(_caption_like(rng) if rng.random() < 0.4 else _mixture(rng))
    return texts
