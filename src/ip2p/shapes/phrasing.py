"""Instruction templates: many wordings per edit kind, some held out from training.

Each kind has at least 20 training templates (synonyms, word orders, polite and terse forms) and
three held-out ones that never appear in training data; at least one held-out template per kind
uses a word order no training template has (e.g. the slot first, or the verb last). The
benchmark reports held-out templates as a column of their own, which measures generalisation to
new wordings. A template id is ``"<kind>/<index>"``; held-out ids are ``"<kind>/h<index>"``.

Slots: ``{obj}`` a referring expression ("the red circle", "the star on the left"), ``{color}``,
``{thing}`` ("a blue star"), ``{place}`` ("in the top left corner"), ``{dir}`` (left, right, up,
down), ``{adj}``/``{adj2}``/``{verb}`` (bigger/larger/enlarge or smaller/tinier/shrink), ``{n}``
(two, three) and ``{things}`` ("circles", "red shapes").
"""

from __future__ import annotations

import re

from .color import COLORS
from .scene import CAPTION_WORDS, KINDS, PLURALS, SIZES, fix_articles

TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor_object": (
        "make {obj} {color}",
        "turn {obj} {color}",
        "paint {obj} {color}",
        "color {obj} {color}",
        "colour {obj} {color}",
        "change {obj} to {color}",
        "change the color of {obj} to {color}",
        "change the colour of {obj} to {color}",
        "recolor {obj} {color}",
        "make {obj} {color} instead",
        "please make {obj} {color}",
        "could you turn {obj} {color}?",
        "can you paint {obj} {color}?",
        "{obj} should be {color}",
        "{obj} in {color}",
        "i want {obj} to be {color}",
        "let {obj} be {color}",
        "give {obj} a {color} color",
        "switch {obj} to {color}",
        "make the color of {obj} {color}",
        "repaint {obj} in {color}",
        "{color} for {obj}",
    ),
    "recolor_background": (
        "make the background {color}",
        "turn the background {color}",
        "paint the background {color}",
        "change the background to {color}",
        "change the background color to {color}",
        "change the colour of the background to {color}",
        "color the background {color}",
        "recolor the background {color}",
        "a {color} background",
        "{color} background",
        "please make the background {color}",
        "could you turn the background {color}?",
        "can you make the backdrop {color}?",
        "the background should be {color}",
        "i want the background to be {color}",
        "let the background be {color}",
        "make the backdrop {color}",
        "switch the background to {color}",
        "give it a {color} background",
        "put it on a {color} background",
        "use a {color} background instead",
        "repaint the background in {color}",
    ),
    "remove_object": (
        "remove {obj}",
        "delete {obj}",
        "erase {obj}",
        "get rid of {obj}",
        "take away {obj}",
        "take out {obj}",
        "remove {obj} please",
        "please remove {obj}",
        "please delete {obj}",
        "could you remove {obj}?",
        "can you erase {obj}?",
        "without {obj}",
        "no {obj}",
        "{obj} should go",
        "{obj} should be gone",
        "make {obj} disappear",
        "i want {obj} gone",
        "lose {obj}",
        "drop {obj}",
        "wipe out {obj}",
        "clear away {obj}",
        "remove {obj} from the picture",
    ),
    "add_object": (
        "add {thing} {place}",
        "put {thing} {place}",
        "place {thing} {place}",
        "draw {thing} {place}",
        "insert {thing} {place}",
        "add {thing} {place} please",
        "please add {thing} {place}",
        "please draw {thing} {place}",
        "could you add {thing} {place}?",
        "can you put {thing} {place}?",
        "{place}, add {thing}",
        "{place}, put {thing}",
        "there should be {thing} {place}",
        "i want {thing} {place}",
        "give it {thing} {place}",
        "include {thing} {place}",
        "make a new shape {place}: {thing}",
        "paint {thing} {place}",
        "add in {thing} {place}",
        "put in {thing} {place}",
        "let there be {thing} {place}",
        "add one more shape, {thing}, {place}",
    ),
    "move_object": (
        "move {obj} {dir}",
        "shift {obj} {dir}",
        "nudge {obj} {dir}",
        "slide {obj} {dir}",
        "push {obj} {dir}",
        "drag {obj} {dir}",
        "move {obj} a bit {dir}",
        "move {obj} further {dir}",
        "move {obj} {dir} a little",
        "shift {obj} {dir} slightly",
        "please move {obj} {dir}",
        "move {obj} {dir} please",
        "could you move {obj} {dir}?",
        "can you shift {obj} {dir}?",
        "{obj} should move {dir}",
        "{obj} goes {dir}",
        "i want {obj} moved {dir}",
        "take {obj} and move it {dir}",
        "bump {obj} {dir}",
        "reposition {obj} {dir}",
        "{obj}: move it {dir}",
        "put {obj} further {dir}",
    ),
    "resize_object": (
        "make {obj} {adj}",
        "make {obj} {adj2}",
        "{verb} {obj}",
        "please {verb} {obj}",
        "please make {obj} {adj}",
        "could you make {obj} {adj}?",
        "can you {verb} {obj}?",
        "{obj} should be {adj}",
        "{obj} should be {adj2}",
        "i want {obj} {adj}",
        "make {obj} a bit {adj}",
        "make {obj} a little {adj2}",
        "{verb} {obj} a bit",
        "{verb} {obj} please",
        "resize {obj} to be {adj}",
        "change the size of {obj}: {adj}",
        "let {obj} be {adj}",
        "turn {obj} {adj}",
        "{obj}, but {adj}",
        "draw {obj} {adj}",
        "scale {obj} to be {adj2}",
        "{obj}: make it {adj}",
    ),
    "grayscale": (
        "make it black and white",
        "make it grayscale",
        "make it greyscale",
        "turn it black and white",
        "turn it into a black and white picture",
        "convert it to grayscale",
        "convert to black and white",
        "remove the colors",
        "remove all color",
        "desaturate it",
        "desaturate the image",
        "black and white",
        "grayscale",
        "please make it black and white",
        "could you make it grayscale?",
        "can you remove the colours?",
        "i want it in black and white",
        "make it monochrome",
        "drain the color out",
        "no colors",
        "make the picture gray",
        "make it look like an old black and white photo",
    ),
    "invert": (
        "invert the colors",
        "invert the colours",
        "invert it",
        "invert the image",
        "make it a negative",
        "turn it into a negative",
        "make it look like a photo negative",
        "negative",
        "inverted colors",
        "please invert the colors",
        "could you invert the image?",
        "can you invert the colours?",
        "i want the colors inverted",
        "flip the colors",
        "reverse the colors",
        "swap every color for its opposite",
        "use the opposite colors",
        "make every color its opposite",
        "invert everything",
        "show the negative",
        "colors inverted please",
        "give it inverted colors",
    ),
    "darken": (
        "make it night",
        "make it nighttime",
        "make it night time",
        "turn it into night",
        "turn day into night",
        "night",
        "at night",
        "make it dark",
        "make it darker",
        "darken it",
        "darken the image",
        "darken the picture",
        "please make it night",
        "could you make it night?",
        "can you darken it?",
        "i want it at night",
        "make it look like night",
        "dim the lights",
        "lower the brightness",
        "make it evening",
        "turn the lights off",
        "make the scene dark",
    ),
    "brighten": (
        "make it brighter",
        "make it bright",
        "brighten it",
        "brighten the image",
        "brighten the picture",
        "increase the brightness",
        "raise the brightness",
        "more light",
        "brighter",
        "lighten it",
        "lighten the image",
        "please make it brighter",
        "could you brighten it?",
        "can you lighten the picture?",
        "i want it brighter",
        "make it look washed out",
        "make it pale",
        "fade the colors",
        "make the colors lighter",
        "turn up the brightness",
        "make it look sunny and bright",
        "add more light",
    ),
    "count_add": (
        "add {n} more {things}",
        "add {n} {things}",
        "put {n} more {things}",
        "draw {n} more {things}",
        "insert {n} more {things}",
        "add another {n} {things}",
        "please add {n} more {things}",
        "could you add {n} more {things}?",
        "can you draw {n} more {things}?",
        "i want {n} more {things}",
        "there should be {n} more {things}",
        "{n} more {things}",
        "{n} more {things} please",
        "add {n} extra {things}",
        "give it {n} more {things}",
        "include {n} more {things}",
        "make {n} more {things}",
        "put in {n} extra {things}",
        "more {things}: {n} of them",
        "add {n} additional {things}",
        "paint {n} more {things}",
        "let there be {n} more {things}",
    ),
    "count_remove": (
        "remove all the {things}",
        "remove all {things}",
        "remove the {things}",
        "delete all the {things}",
        "erase all the {things}",
        "get rid of all the {things}",
        "take away all the {things}",
        "take out every one of the {things}",
        "please remove all the {things}",
        "could you remove all the {things}?",
        "can you delete the {things}?",
        "no {things}",
        "no more {things}",
        "without any {things}",
        "without the {things}",
        "all the {things} should go",
        "i want all the {things} gone",
        "make all the {things} disappear",
        "clear away the {things}",
        "wipe out all the {things}",
        "drop every one of the {things}",
        "remove every single one of the {things}",
    ),
}

#: Training-only templates that name the colour before what it takes it (``ip2p shapes make
#: --phrasings target-first``): one stock recolour template in 22 does, and the worst held-out one
#: ("{color} is what {obj} should be") does too. Apart from :data:`TEMPLATES`, so that the benchmark's
#: seen phrasings stay the ones earlier runs were scored on; only words the stock templates use.
TARGET_FIRST: dict[str, tuple[str, ...]] = {
    "recolor_object": (
        "{color} should be the color of {obj}",
        "{color} should be the colour of {obj}",
        "{color} for {obj}, please",
        "the color {color} for {obj}",
        "{color} on {obj}",
        "i want {color} on {obj}",
        "{color}, please, for {obj}",
        "{color} should be on {obj}",
    ),
    "recolor_background": (
        "{color} for the background",
        "{color} should be the color of the background",
        "the color {color} for the background, please",
        "i want {color} on the background",
    ),
}
#: Each training phrasing and the kinds whose :data:`TARGET_FIRST` templates it adds.
#: "target-first-objects" leaves out the background's: from run 22 they are suspected of teaching
#: "{color} ... the circle" to recolour the background (docs/demo-model.md, runs 21-23).
TARGET_FIRST_KINDS: dict[str, tuple[str, ...]] = {
    "stock": (), "target-first": tuple(TARGET_FIRST), "target-first-objects": ("recolor_object",)}
PHRASINGS = tuple(TARGET_FIRST_KINDS)

#: Held-out templates (never in training data); the first of each has a new word order.
HELD_OUT: dict[str, tuple[str, ...]] = {
    "recolor_object": ("{color} is what {obj} should be", "kindly recolour {obj} {color}", "dye {obj} {color}"),
    "recolor_background": (
        "{color} is what the background should be",
        "kindly recolour the background {color}",
        "dye the background {color}",
    ),
    "remove_object": ("{obj}? remove it", "kindly eliminate {obj}", "banish {obj}"),
    "add_object": ("{thing} {place}, please", "kindly sketch {thing} {place}", "stick {thing} {place}"),
    "move_object": ("{dir} with {obj}", "kindly relocate {obj} {dir}", "let {obj} drift {dir}"),
    "resize_object": ("{adj} is how {obj} should be", "kindly make {obj} {adj}", "rescale {obj} to be {adj2}"),
    "grayscale": ("black and white is how it should be", "kindly strip the colour", "render it in shades of gray"),
    "invert": ("the colors? invert them", "kindly invert the palette", "produce the negative image"),
    "darken": ("night is what it should be", "kindly turn it into a dark night", "it should look like midnight"),
    "brighten": ("brighter is how it should be", "kindly boost the brightness", "flood it with light"),
    "count_add": ("{n} more {things}, add them", "kindly add {n} more {things}", "sprinkle in {n} more {things}"),
    "count_remove": ("the {things}? remove them all", "kindly eliminate all the {things}", "banish every one of the {things}"),
}

#: Kinds for the four failure modes of instruction editors (counting, spatial, viewpoint, identity;
#: :data:`ip2p.shapes.bench.FAILURE_MODE_SUITE`). Slots beyond the above: ``{obj2}`` a second
#: referring expression, ``{n}`` one or two.
FAILURE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "count_remove_n": (
        "remove {n} of the {things}",
        "delete {n} of the {things}",
        "erase {n} of the {things}",
        "take away {n} of the {things}",
        "take out {n} of the {things}",
        "get rid of {n} of the {things}",
        "remove just {n} of the {things}",
        "remove only {n} of the {things}",
        "please remove {n} of the {things}",
        "please delete {n} of the {things}",
        "could you remove {n} of the {things}?",
        "can you erase {n} of the {things}?",
        "i want {n} of the {things} gone",
        "{n} of the {things} should go",
        "make {n} of the {things} disappear",
        "drop {n} of the {things}",
        "lose {n} of the {things}",
        "wipe out {n} of the {things}",
        "clear away {n} of the {things}",
        "remove exactly {n} of the {things}",
        "take {n} of the {things} out of the picture",
        "keep the rest but remove {n} of the {things}",
    ),
    "swap_objects": (
        "swap {obj} and {obj2}",
        "swap {obj} with {obj2}",
        "switch {obj} and {obj2}",
        "exchange {obj} and {obj2}",
        "interchange {obj} and {obj2}",
        "swap the positions of {obj} and {obj2}",
        "switch the places of {obj} and {obj2}",
        "exchange the places of {obj} and {obj2}",
        "reverse the positions of {obj} and {obj2}",
        "let {obj} and {obj2} trade places",
        "make {obj} and {obj2} switch places",
        "please swap {obj} and {obj2}",
        "could you swap {obj} and {obj2}?",
        "can you switch {obj} and {obj2}?",
        "{obj} and {obj2} should swap places",
        "{obj} and {obj2} swap places",
        "i want {obj} and {obj2} swapped",
        "swap {obj} and {obj2} around",
        "put {obj} where {obj2} is and {obj2} where {obj} is",
        "move {obj} to where {obj2} is and the other way round",
        "trade the places of {obj} and {obj2}",
        "swap where {obj} and {obj2} are",
    ),
    "rotate_object": (
        "rotate {obj} 90 degrees clockwise",
        "rotate {obj} clockwise by 90 degrees",
        "turn {obj} 90 degrees clockwise",
        "turn {obj} clockwise by 90 degrees",
        "rotate {obj} a quarter turn clockwise",
        "give {obj} a quarter turn clockwise",
        "turn {obj} a quarter turn clockwise",
        "spin {obj} 90 degrees clockwise",
        "rotate {obj} ninety degrees clockwise",
        "turn {obj} ninety degrees clockwise",
        "tilt {obj} 90 degrees clockwise",
        "please rotate {obj} 90 degrees clockwise",
        "please turn {obj} clockwise by 90 degrees",
        "could you rotate {obj} 90 degrees clockwise?",
        "can you give {obj} a quarter turn clockwise?",
        "{obj} should be rotated 90 degrees clockwise",
        "{obj} rotated 90 degrees clockwise",
        "i want {obj} rotated clockwise by 90 degrees",
        "rotate {obj} clockwise, 90 degrees",
        "clockwise, rotate {obj} by 90 degrees",
        "make {obj} turn 90 degrees clockwise",
        "rotate {obj} by a right angle clockwise",
    ),
    "flip_object": (
        "turn {obj} upside down",
        "flip {obj} upside down",
        "put {obj} upside down",
        "make {obj} upside down",
        "flip {obj} vertically",
        "mirror {obj} vertically",
        "flip {obj} top to bottom",
        "turn {obj} on its head",
        "stand {obj} on its head",
        "rotate {obj} 180 degrees",
        "rotate {obj} by 180 degrees",
        "turn {obj} 180 degrees",
        "give {obj} a half turn",
        "please turn {obj} upside down",
        "please flip {obj} vertically",
        "could you flip {obj} upside down?",
        "can you turn {obj} upside down?",
        "{obj} should be upside down",
        "{obj} upside down",
        "i want {obj} upside down",
        "upend {obj}",
        "turn {obj} over, top to bottom",
    ),
    "flip_scene": (
        "mirror the picture",
        "mirror the image",
        "mirror it",
        "mirror it left to right",
        "flip the picture horizontally",
        "flip the image horizontally",
        "flip it horizontally",
        "flip it left to right",
        "flip the picture left to right",
        "flip the whole scene horizontally",
        "make it a mirror image",
        "make a mirror image of it",
        "show the mirror image",
        "reflect the picture horizontally",
        "reflect it left to right",
        "please mirror the picture",
        "could you flip it horizontally?",
        "can you mirror the image?",
        "i want it mirrored",
        "mirrored",
        "horizontal flip",
        "swap left and right",
    ),
    "keep_object": (
        "make the background {color} but keep {obj} as it is",
        "turn the background {color} and leave {obj} alone",
        "change the background to {color}, keep {obj} unchanged",
        "paint the background {color} without touching {obj}",
        "make the background {color} and do not change {obj}",
        "recolor the background {color} but leave {obj} as it is",
        "switch the background to {color} and keep {obj} the same",
        "please make the background {color} but keep {obj}",
        "could you make the background {color} and keep {obj} as it is?",
        "can you turn the background {color} without changing {obj}?",
        "i want a {color} background with {obj} unchanged",
        "only the background should turn {color}; keep {obj}",
        "keep {obj} but make the background {color}",
        "keep {obj} as it is and make the background {color}",
        "leave {obj} alone and turn the background {color}",
        "{obj} stays, the background becomes {color}",
        "give it a {color} background and keep {obj} intact",
        "change only the background to {color}, not {obj}",
        "background {color}, {obj} untouched",
        "repaint the background in {color} and keep {obj} exactly the same",
        "use a {color} background but keep {obj} the way it is",
        "make the backdrop {color}, leaving {obj} as it is",
    ),
}
FAILURE_HELD_OUT: dict[str, tuple[str, ...]] = {
    "count_remove_n": ("{n} of the {things}? remove them", "kindly eliminate {n} of the {things}",
                       "banish {n} of the {things}"),
    "swap_objects": ("{obj} and {obj2}? swap them", "kindly transpose {obj} and {obj2}",
                     "let {obj} and {obj2} change seats"),
    "rotate_object": ("{obj}? rotate it clockwise by 90 degrees", "kindly pivot {obj} 90 degrees clockwise",
                      "swivel {obj} a quarter turn clockwise"),
    "flip_object": ("{obj}? turn it upside down", "kindly capsize {obj}", "let {obj} hang upside down"),
    "flip_scene": ("the picture? mirror it", "kindly reflect the scene", "show it as seen in a mirror"),
    "keep_object": ("{obj} must stay; the background should be {color}",
                    "kindly recolour the backdrop {color}, sparing {obj}",
                    "dye the background {color} and preserve {obj}"),
}

#: The default kinds: what an example draws from when no kinds are named. The failure-mode kinds are
#: only made when named, so every default data set (and the demo model's training data) is unchanged.
EDIT_KINDS = tuple(TEMPLATES)
FAILURE_KINDS = tuple(FAILURE_TEMPLATES)
ALL_KINDS = EDIT_KINDS + FAILURE_KINDS
TEMPLATES.update(FAILURE_TEMPLATES)
HELD_OUT.update(FAILURE_HELD_OUT)

#: What each slot can be filled with (the words, for the vocabulary).
DIRECTIONS = ("left", "right", "up", "down")
NUMBERS = {2: "two", 3: "three"}
#: How many of a group ``count_remove_n`` removes.
REMOVE_NUMBERS = {1: "one", 2: "two"}
RESIZE_WORDS = {
    "bigger": {"adj": "bigger", "adj2": "larger", "verb": "enlarge"},
    "smaller": {"adj": "smaller", "adj2": "tinier", "verb": "shrink"},
}
PLACES = {
    "on the left": (0.0, 0.25, 0.36, 0.75),
    "on the right": (0.64, 0.25, 1.0, 0.75),
    "at the top": (0.25, 0.0, 0.75, 0.36),
    "at the bottom": (0.25, 0.64, 0.75, 1.0),
    "in the top left corner": (0.0, 0.0, 0.36, 0.36),
    "in the top right corner": (0.64, 0.0, 1.0, 0.36),
    "in the bottom left corner": (0.0, 0.64, 0.36, 1.0),
    "in the bottom right corner": (0.64, 0.64, 1.0, 1.0),
    "in the middle": (0.32, 0.32, 0.68, 0.68),
}
#: Words of referring expressions and slot fillers beyond colours and kinds.
REFERENCE_WORDS = "the a shape one object shapes objects on left right top bottom leftmost rightmost topmost lowest"

_SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


def templates_for(kind: str, held_out: bool, phrasings: str = "stock") -> list[tuple[str, str]]:
    """(template id, template) pairs of one kind: held-out, or training ones (with :data:`TARGET_FIRST`'s
    too, ids ``kind/f0``, ..., where ``phrasings`` adds them: :data:`TARGET_FIRST_KINDS`)."""
    if held_out:
        return [(f"{kind}/h{i}", t) for i, t in enumerate(HELD_OUT[kind])]
    pairs = [(f"{kind}/{i}", t) for i, t in enumerate(TEMPLATES[kind])]
    if kind in TARGET_FIRST_KINDS[phrasings]:
        pairs += [(f"{kind}/f{i}", t) for i, t in enumerate(TARGET_FIRST.get(kind, ()))]
    return pairs


def template_by_id(template_id: str) -> str:
    kind, _, index = template_id.partition("/")
    if index.startswith("h"):
        return HELD_OUT[kind][int(index[1:])]
    if index.startswith("f"):
        return TARGET_FIRST[kind][int(index[1:])]
    return TEMPLATES[kind][int(index)]


def fill(template: str, slots: dict[str, str]) -> str:
    """Fill a template's ``{slots}`` (every slot it names must be given) and tidy spaces."""
    text = _SLOT.sub(lambda m: slots[m.group(1)], template)
    return fix_articles(" ".join(text.split()))


def slots_of(template: str) -> set[str]:
    return set(_SLOT.findall(template))


def vocabulary() -> list[str]:
    """Every word an instruction or caption of this world can contain, sorted (for a word-level tokenizer).

    Words are split the way CLIP's pre-tokenizer splits them (lower case, punctuation apart).
    """
    texts = [_SLOT.sub(" ", t) for kind in TEMPLATES for t in TEMPLATES[kind] + HELD_OUT[kind]
             + TARGET_FIRST.get(kind, ())]
    texts += _slot_fillers() + [REFERENCE_WORDS, CAPTION_WORDS, GLOBAL_CAPTION_WORDS]
    return _words(texts)


def _slot_fillers() -> list[str]:
    """What fills a template's slots: colours, kinds, plurals, sizes, directions, numbers, places."""
    texts = list(COLORS) + list(KINDS) + list(PLURALS.values()) + list(SIZES) + list(DIRECTIONS) + list(PLACES)
    return texts + list(NUMBERS.values()) + list(REMOVE_NUMBERS.values()) + [
        w for words in RESIZE_WORDS.values() for w in words.values()]


def _words(texts: list[str]) -> list[str]:
    return sorted({w for text in texts for w in _WORD.findall(text.lower())})


def content_words() -> list[str]:
    """The words that carry an instruction's content, sorted: the slot fillers (colours, shapes,
    places, sizes, numbers) and the words that name a global edit (night, brighter, negative, ...).

    Training replaces *other* words by unknown ones (``data.unknown_words``) so that a model learns
    to read an edit from these and not from one template's verb; held-out templates use new verbs.
    """
    return _words(_slot_fillers() + [
        "left right top bottom leftmost rightmost topmost lowest background",
        "night nighttime dark darker darken dim evening lights brightness bright brighter brighten light",
        "lighten lighter pale sunny washed fade invert inverted negative opposite reverse flip grayscale",
        "greyscale gray grey desaturate monochrome color colors colour colours"])


#: Words the output captions of global edits add.
GLOBAL_CAPTION_WORDS = "a black and white picture of an inverted at night bright"
