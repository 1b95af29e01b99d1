"""Captions of a synthetic scene: several phrasings, each true of the picture.

A caption fills a template of ``synthetic.json`` (one list per object count) with noun phrases
("a small red circle", "the big star in blue") and spatial relations computed from the scene
("left of", "above", "in front of"). Objects are mentioned in a random order per caption, so
the captions of one image differ in wording and in order.
"""
from __future__ import annotations

from typing import List

import numpy as np

from .scene import FRONT, Obj, Scene, vocabulary


def captions(scene: Scene, rng: np.random.Generator, count: int, colour_free: float = 0.0) -> List[str]:
    """``count`` captions of ``scene``; distinct templates while the object count's list lasts.

    ``colour_free``: the probability that a noun phrase names no colour ("a big star"); at 0
    (version 1) no extra random number is drawn, so version 1's captions stay as they were.
    """
    templates = vocabulary()["captions"][str(len(scene.objects))]
    picks = rng.permutation(len(templates)).tolist()
    while len(picks) < count:
        picks += rng.permutation(len(templates)).tolist()
    return [_fill(templates[t], scene, rng, colour_free) for t in picks[:count]]


def _fill(template: str, scene: Scene, rng, colour_free: float = 0.0) -> str:
    v = vocabulary()
    order = rng.permutation(len(scene.objects)).tolist()
    words = {"bg": str(rng.choice(v["backgrounds"][scene.background]))}
    for slot, i in zip("abc", order):
        phrase = noun_phrase(scene.objects[i], rng, colour=not (colour_free and rng.random() < colour_free))
        words[slot], words[f"the_{slot}"] = f"{_article(phrase)} {phrase}", f"the {phrase}"
    slots = dict(zip("abc", order))
    for first, second in ("ab", "cb"):
        if first in slots and second in slots:
            key = relation(scene, slots[first], slots[second])
            words[first + second] = str(rng.choice(v["relations"][key]))
    return template.format(**words)


def noun_phrase(obj: Obj, rng, colour: bool = True) -> str:
    """"small red circle", "big star in blue", ...: size, colour and shape words of ``obj``
    (``colour=False``: size and shape only, "small circle", "star")."""
    v = vocabulary()
    pattern = str(rng.choice(v["noun_phrases"] if colour else v["colourless_noun_phrases"]))
    return pattern.format(size=str(rng.choice(v["size_words"][obj.size])),
                          colour=str(rng.choice(v["colour_words"][obj.colour])),
                          shape=str(rng.choice(v["shape_words"][obj.shape])))


def relation(scene: Scene, i: int, j: int) -> str:
    """Where object ``i`` is with respect to object ``j``: a key of the vocabulary's ``relations``.

    Occlusion wins ("front" / "behind" when one hides at least ``FRONT`` of the other); otherwise
    the larger of the horizontal and vertical offsets between the centres decides.
    """
    if scene.overlaps.get((i, j), 0.0) >= FRONT:
        return "front"
    if scene.overlaps.get((j, i), 0.0) >= FRONT:
        return "behind"
    (xi, yi), (xj, yj) = scene.objects[i].centre, scene.objects[j].centre
    if abs(xi - xj) >= abs(yi - yj):
        return "left" if xi < xj else "right"
    return "above" if yi < yj else "below"


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"
