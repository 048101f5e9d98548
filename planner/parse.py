"""Step sentence -> ActionGoal.

Covers the simulator's own phrasing ("Pick up the red cup.", "Place the red cup in the rack.")
and free-form English as a large model writes it ("Now grab the second mug and drop it into the
dish rack"). The parser never guesses: a sentence it cannot read, an object the scene does not
have, a reference that could mean two objects, two actions in one step, a negation or a question
all give ``GoalStatus.UNKNOWN`` with a reason, and the execution monitor decides what to do.

Two levels:

- ``parse(sentence, vocab, context) -> ParsedStep``: verb, an ``ObjectRef`` (colour, kind, ordinal,
  side: "the second cup", "the one on the left"), a target. References that need the image to be
  resolved (ordinals, sides) stay open here; ``planner.grounding`` resolves them.
- ``parse_goal(...) -> ActionGoal``: the same, as the shared goal type.

``vocab`` (``Vocabulary.from_env(env)``) lists the names the executor accepts; without one the
parser still extracts the phrases but cannot check them against the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from emu_guide.types import ActionGoal, GoalStatus

__all__ = [
    "COLOURS",
    "ObjectRef",
    "ParseContext",
    "ParsedStep",
    "Vocabulary",
    "parse",
    "parse_goal",
]

# ---------------------------------------------------------------------------------------------
# Word tables
# ---------------------------------------------------------------------------------------------

COLOURS = (
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey",
    "brown", "cyan", "magenta", "teal", "beige", "violet",
)  # fmt: skip

# Multi-word verbs first: the longest match wins. value = our verb, or "pick?" for verbs that
# mean pick alone but place when a destination follows ("take the cup to the rack").
VERB_PHRASES: dict[str, str] = {
    "pick up": "pick", "lift up": "pick", "pick": "pick", "grab": "pick", "grasp": "pick",
    "lift": "pick", "take": "pick?", "get": "pick?", "fetch": "pick?", "collect": "pick?",
    "seize": "pick", "raise": "pick", "hold": "pick",
    "put down": "place", "set down": "place", "put away": "place", "throw away": "place",
    "put": "place", "place": "place", "set": "place", "drop": "place", "deposit": "place",
    "lay": "place", "insert": "place", "move": "place", "bring": "place", "carry": "place",
    "transfer": "place", "return": "place", "stow": "place", "load": "place", "release": "place",
    "throw": "place", "toss": "place", "discard": "place", "dispose of": "place", "relocate": "place",
    "let go of": "place",  # not "let go": "let's go ahead and ..." normalises to "let go ahead and ..."
    "fold over": "fold", "fold": "fold", "tuck": "fold", "flip": "fold",
    "stack": "stack", "pile": "stack",
    "push": "push", "slide": "push", "shove": "push", "nudge": "push",
    "open": "open", "close": "close", "shut": "close",
}  # fmt: skip

# Sentences that mean "the task is complete".
DONE_PATTERNS = (
    r"^(all )?done$", r"^(the )?task (is )?(complete|completed|done|finished)$", r"^finished$",
    r"^(the )?table is (now )?(clear|cleared|clean|empty)$", r"^nothing (is )?left( to do)?$",
    r"^(everything|all items|all objects) (is |are )?(put away|cleared|in place|sorted|done)$",
    r"^(the )?(shirt|cloth|t shirt|garment) is (now )?(fully )?folded$", r"^stop$", r"^complete$",
    r"^(all )?(the )?blocks are (now )?(sorted|stacked)$",
)  # fmt: skip

# "done: the table is clear": a completion word followed by a sentence that says the same.
DONE_LEAD = re.compile(r"^(all done|done|finished|complete|task complete|task done) (.+)$")
# "move the cup to the rack and release it": letting go of what was just placed is part of the
# place, not a second action (the place's gripper is already "open").
RELEASE_TAIL = re.compile(
    r"^(.+?) (?:and then|and|then) (?:release|let go of|let go|drop|open the gripper)(?: it| them)?(?: there)?$")

# Words that carry no meaning for the goal.
FILLER = {
    "please", "now", "then", "next", "first", "firstly", "finally", "lastly", "after", "that",
    "carefully", "gently", "slowly", "quickly", "robot", "you", "should", "can", "could", "let's",
    "lets", "let", "us", "go", "ahead", "and", "to", "we", "will", "i", "need", "must", "step", "shall",
}  # fmt: skip
ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "its", "my", "your"}
HEAD_FILLER = {"object", "item", "thing", "one", "ones", "piece"}
PRONOUNS = {"it", "them", "that", "this", "one"}

# Destination prepositions, longest first. A place/fold/stack phrase splits object | target here.
TARGET_PREPS = (
    "on top of", "in to", "into", "onto", "inside of", "inside", "in", "on", "to", "toward",
    "towards", "over", "at", "over to", "across to", "up to", "down to", "above",
)  # fmt: skip
SOURCE_PREPS = ("from", "off", "out of", "off of")  # "pick up the cup from the table"

ORDINALS = {
    "first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
    "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "seventh": 7, "7th": 7, "eighth": 8, "8th": 8,
    "last": -1,
}  # fmt: skip

# "the one on the left", "the leftmost cup", "the cup nearest to the camera": a side selector.
SIDE_WORDS = {
    "left": "left", "leftmost": "left", "right": "right", "rightmost": "right",
    "front": "front", "nearest": "front", "closest": "front", "near": "front",
    "back": "back", "far": "back", "farthest": "back", "furthest": "back", "rear": "back",
    "middle": "middle", "center": "middle", "centre": "middle",
}  # fmt: skip

# Synonym -> canonical noun, used only when the scene has the canonical noun and not the synonym.
NOUN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cup": ("mug", "glass", "tumbler", "beaker"),
    "plate": ("dish", "saucer", "platter"),
    "bowl": ("basin",),
    "fork": (),
    "spoon": ("teaspoon", "tablespoon"),
    "knife": (),
    "napkin": ("serviette", "tissue", "cloth napkin"),
    "rack": ("dish rack", "drying rack", "dishrack", "dish drainer", "drainer", "dish rack"),
    "bin": ("trash", "trash can", "garbage", "garbage can", "rubbish bin", "waste bin", "wastebasket",
            "dustbin", "trash bin", "garbage bin", "recycling bin", "rubbish"),
    "tray": ("serving tray",),
    "basket": ("hamper",),
    "block": ("cube", "brick", "box"),
    "centre": ("center", "middle"),
    "sleeve": (),
    "collar": ("neck", "neckline"),
    "hem": ("bottom edge",),
    "shirt": ("t shirt", "tshirt", "tee", "top"),
}  # fmt: skip

_NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}


def _normalise(sentence: str) -> str:
    s = sentence.lower().strip()
    s = s.replace("t-shirt", "t shirt").replace("’", "'")
    s = re.sub(r"^\s*(step\s*)?\d+\s*[.):-]\s*", "", s)  # "3. ", "step 3:" prefixes
    s = re.sub(r"^\s*[-*•]\s*", "", s)  # bullet points
    s = s.replace("center", "centre")
    s = re.sub(r"[^a-z0-9' ]+", " ", s)  # punctuation -> space (the '?' check happens before)
    s = s.replace("'s", "")
    return re.sub(r"\s+", " ", s).strip()


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ves"):  # knives -> knife, shelves -> shelf
        return word[:-3] + ("fe" if word.startswith("kni") else "f")
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """The names the executor accepts in this scene (``env.unwrapped.object_names()`` etc.)."""

    objects: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    # Every object name the task can have (``name_vocabulary()``), a superset of ``objects``:
    # what grounded decoding must know about to ban the absent ones.
    known_objects: tuple[str, ...] = ()
    # Verb phrases the environment declares beyond the built-in table (``skill_verbs()``):
    # phrase -> verb, e.g. {"press": "press", "push down": "press", "pull": "pull"}.
    skills: dict[str, str] = field(default_factory=dict)
    # True: ``objects`` are the current scene's (an env's object_names()); False: a configured list
    # of names the executor accepts (a robot's), which says nothing about what is present now.
    objects_present: bool = True

    def __post_init__(self) -> None:
        self.skills = {" ".join(k.lower().split()): v.lower().strip() for k, v in dict(self.skills).items()}
        for phrase, verb in self.skills.items():
            if not phrase or not re.fullmatch(r"[a-z][a-z_]*", verb):
                raise ValueError(f"Vocabulary: skill phrase {phrase!r} -> verb {verb!r}: a verb is one lowercase word")
        self.objects = tuple(o.lower().strip() for o in self.objects)
        self.targets = tuple(t.lower().strip() for t in self.targets)
        self.known_objects = tuple(dict.fromkeys([*(o.lower().strip() for o in self.known_objects), *self.objects]))
        for name in (*self.objects, *self.targets, *self.known_objects):
            if not name:
                raise ValueError("Vocabulary: empty object/target name")

    @classmethod
    def from_env(cls, env: object) -> Vocabulary:
        from emu_guide.env_protocol import guidance_env

        u = guidance_env(env)
        known = u.name_vocabulary() if hasattr(u, "name_vocabulary") else ()
        skills = u.skill_verbs() if hasattr(u, "skill_verbs") else {}
        return cls(tuple(u.object_names()), tuple(u.target_names()), tuple(known), dict(skills))

    @property
    def empty(self) -> bool:
        return not self.objects and not self.targets


@dataclass
class ObjectRef:
    """A reference to an object as written: "the second red cup", "the one on the left", "it"."""

    text: str  # the phrase as written, normalised
    noun: str | None = None  # canonical head noun ("cup"); None for "the one on the left"
    colour: str | None = None
    ordinal: int | None = None  # 1-based from the left; -1 = last
    side: str | None = None  # left | right | front | back | middle
    name: str | None = None  # resolved vocabulary name ("red cup") when unique without the image
    candidates: tuple[str, ...] = ()  # vocabulary names it may mean (for grounding to choose)

    @property
    def needs_image(self) -> bool:
        """True when only the image can say which candidate is meant (ordinal or side)."""
        return self.name is None and len(self.candidates) > 1 and (self.ordinal is not None or self.side is not None)

    def describe(self) -> str:
        return self.name or self.text


@dataclass
class ParseContext:
    """What earlier steps tell the parser: the object in hand resolves "it" / "them"."""

    held_object: str | None = None
    last_object: str | None = None


@dataclass
class ParsedStep:
    sentence: str
    verb: str | None = None
    obj: ObjectRef | None = None
    target: str | None = None  # vocabulary target name, or the phrase when no vocabulary
    target_ref: ObjectRef | None = None  # set when the target is an object ("stack red on blue")
    gripper: str | None = None
    status: GoalStatus = GoalStatus.OK
    reason: str = ""
    alternatives: list[str] = field(default_factory=list)

    def to_goal(self, step_index: int = 0, stamp: float = 0.0, frame_id: str = "table") -> ActionGoal:
        """The step as an ActionGoal. UNKNOWN goals carry verb "done" and object "" as placeholders:
        only ``status`` and ``reason`` count for them (ActionGoal.verb must be one of VERBS)."""
        if self.status == GoalStatus.UNKNOWN:
            return ActionGoal(
                verb=self.verb if self.verb in ("pick", "place", "fold", "stack", "push", "open", "close") else "done",
                object=self.obj.describe() if self.obj else "",
                step_index=step_index,
                stamp=stamp,
                frame_id=frame_id,
                status=GoalStatus.UNKNOWN,
                confidence=0.0,
                reason=self.reason,
            )
        assert self.verb is not None
        return ActionGoal(
            verb=self.verb,
            object=self.obj.describe() if self.obj else "",
            target=self.target,
            gripper=self.gripper,
            step_index=step_index,
            stamp=stamp,
            frame_id=frame_id,
            status=self.status,
            reason=self.reason,
        )


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _unknown(sentence: str, reason: str, verb: str | None = None, obj: ObjectRef | None = None) -> ParsedStep:
    return ParsedStep(sentence=sentence, verb=verb, obj=obj, status=GoalStatus.UNKNOWN, reason=reason)


def _find_verbs(words: list[str], extra: dict[str, str] | None = None) -> list[tuple[int, int, str]]:
    """All verb phrases as (start, end, verb), longest match at each position; ``extra``: the
    environment's own verb phrases (they win over a built-in phrase of the same words)."""
    table = {**VERB_PHRASES, **(extra or {})}
    found = []
    i = 0
    phrases = sorted(table, key=lambda p: -len(p.split()))
    while i < len(words):
        for p in phrases:
            pw = p.split()
            if words[i : i + len(pw)] == pw:
                # "set", "open", "close"... also appear as plain words; accept them as verbs only at
                # the start of a clause (sentence start or after and/then/filler).
                if i > 0 and words[i - 1] not in FILLER | {"and", "then"} and p in ("set", "open", "close", "hold",
                                                                                      "get", "return"):
                    continue
                found.append((i, i + len(pw), table[p]))
                i += len(pw) - 1
                break
        i += 1
    return found


def _canonical_words(text: str, known_nouns: set[str]) -> list[str]:
    """Replace multi-word and single-word synonyms by canonical nouns the scene knows."""
    s = f" {text} "
    for canon, syns in NOUN_SYNONYMS.items():
        if known_nouns and canon not in known_nouns:
            continue
        for syn in sorted(syns, key=len, reverse=True):
            if known_nouns and syn in known_nouns:
                continue
            s = re.sub(rf" {re.escape(syn)}(e?s)? ", f" {canon} ", s)
    words = []
    for w in s.split():
        if known_nouns and w not in known_nouns and _singular(w) in known_nouns:
            w = _singular(w)
        words.append(w)
    return words


def _vocab_words(vocab: Vocabulary) -> set[str]:
    return {w for name in (*vocab.objects, *vocab.targets) for w in name.split()}


def _parse_ref(phrase: str, names: tuple[str, ...], vocab_words: set[str], what: str) -> ObjectRef | str:
    """Noun phrase -> ObjectRef resolved against ``names``; a str is the reason it failed."""
    words = [w for w in _canonical_words(phrase, vocab_words) if w not in ARTICLES]
    # "the one on the left" / "the cup on the right": a trailing "on the left" is a side selector.
    text = " ".join(words)
    if not words:
        return f"no {what} named"
    ordinal = None
    side = None
    kept: list[str] = []
    for w in words:
        if w in ORDINALS and w not in vocab_words:
            if ordinal is not None:
                return f"two ordinals in {what} phrase {text!r}"
            ordinal = ORDINALS[w]
        elif w in ("on", "of", "at", "to", "side", "hand", "most", "in", "closer", "camera", "robot", "table") and (
                w not in vocab_words):
            continue
        else:
            kept.append(w)
    # Exact vocabulary match first (names may contain side words: "left sleeve").
    if any(w in _NUMBER_WORDS - {"one"} for w in kept):
        return f"counts are not supported in {what} phrase {text!r}: one step acts on one object"
    joined = " ".join(kept)
    if names:
        exact = [n for n in names if re.search(rf"(^| ){re.escape(n)}( |$)", joined)]
        if exact:
            best = max(exact, key=lambda n: len(n.split()))
            rest = [w for w in kept if w not in best.split()]
            extra_colours = [w for w in rest if w in COLOURS]
            if extra_colours:
                return f"two colours in {what} phrase {text!r} ({best!r} and {extra_colours[0]!r})"
            side = _side_of(rest)
            return ObjectRef(text=text, noun=best.split()[-1], name=best, candidates=(best,), ordinal=ordinal,
                             side=side)
    remaining = []
    for w in kept:
        if w in SIDE_WORDS and (not vocab_words or w not in vocab_words):
            if side is not None and side != SIDE_WORDS[w]:
                return f"conflicting sides in {what} phrase {text!r}"
            side = SIDE_WORDS[w]
        else:
            remaining.append(w)
    colour = None
    nouns = []
    for w in remaining:
        if w in ("gray",):
            w = "grey"
        if w in COLOURS and (colour is None or not names):
            if colour is not None:
                return f"two colours in {what} phrase {text!r}"
            colour = w
        elif w in HEAD_FILLER:
            continue
        elif w in ("light", "dark", "small", "big", "large", "little", "empty", "dirty", "clean", "used"):
            continue  # descriptive adjectives that names do not carry
        else:
            nouns.append(w)
    noun = nouns[-1] if nouns else None
    if not names:
        if noun is None and colour is None:
            return f"{what} phrase {text!r} names nothing"
        label = " ".join(x for x in (colour, *nouns) if x)
        return ObjectRef(text=text, noun=noun, colour=colour, ordinal=ordinal, side=side, name=label or None,
                         candidates=(label,) if label else ())
    cands = []
    for n in names:
        nw = n.split()
        if noun is not None and noun not in nw:
            continue
        if colour is not None and colour not in nw:
            continue
        if any(x not in nw for x in nouns[:-1]):
            continue
        cands.append(n)
    ref = ObjectRef(text=text, noun=noun, colour=colour, ordinal=ordinal, side=side, candidates=tuple(cands))
    if not cands:
        return f"no {what} matching {text!r} in this scene (known: {', '.join(names)})"
    if len(cands) == 1 and ordinal in (None, 1, -1):
        ref.name = cands[0]
        return ref
    if ordinal is not None and ordinal > len(cands):
        return f"{what} phrase {text!r} asks for #{ordinal} but only {len(cands)} match ({', '.join(cands)})"
    if ordinal is None and side is None:
        return f"ambiguous {what} {text!r}: could be {', '.join(cands)}"
    return ref  # resolved by grounding (needs the image)


def _side_of(words: list[str]) -> str | None:
    for w in words:
        if w in SIDE_WORDS:
            return SIDE_WORDS[w]
    return None


def _split_target(words: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Split "the red cup into the dish rack" -> (object words, preposition, target words)."""
    preps = sorted(set(TARGET_PREPS), key=lambda p: -len(p.split()))
    for i in range(len(words)):
        for p in preps:
            pw = p.split()
            if words[i : i + len(pw)] == pw:
                after = words[i + len(pw) :]
                # "the cup nearest to the camera": a selector, not a destination.
                if i > 0 and words[i - 1] in ("nearest", "closest", "next", "near", "close", "farthest", "furthest"):
                    continue
                # "on the left"/"on the right" describe the object, not a destination.
                if p in ("on", "to", "at") and after[:2] in (["the", "left"], ["the", "right"]) and (
                    len(after) <= 2 or after[2] in ("side", "hand", "of", "one") or after[2] in TARGET_PREPS):
                    continue
                if p in ("on", "at") and after[:1] in (["left"], ["right"]):
                    continue
                if p == "in" and after[:2] in (["the", "front"], ["the", "back"], ["the", "middle"]) and len(after) <= 2:
                    continue
                if p == "in" and after[:1] == ["half"]:  # "fold the shirt in half"
                    return words[:i], p, ["half"]
                return words[:i], p, after
    return words, None, []


def parse(sentence: str, vocab: Vocabulary | None = None, context: ParseContext | None = None) -> ParsedStep:
    """One step sentence -> ParsedStep (status OK or UNKNOWN with a reason; never a guess)."""
    if not isinstance(sentence, str):
        raise ValueError(f"parse: expected a sentence (str), got {type(sentence).__name__}")
    vocab = vocab or Vocabulary()
    context = context or ParseContext()
    raw = sentence.strip()
    if not raw:
        return _unknown(sentence, "empty step")
    if raw.rstrip().endswith("?"):
        return _unknown(sentence, "the step is a question, not an action")
    text = _normalise(raw)
    if not text:
        return _unknown(sentence, "no words in the step")
    for pat in DONE_PATTERNS:
        if re.match(pat, text):
            return ParsedStep(sentence=sentence, verb="done", obj=None)
    lead = DONE_LEAD.match(text)
    if lead and any(re.match(pat, lead.group(2)) for pat in DONE_PATTERNS):
        return ParsedStep(sentence=sentence, verb="done", obj=None)
    tail = RELEASE_TAIL.match(text)
    if tail:
        head = parse(tail.group(1), vocab, context)
        if head.status == GoalStatus.OK and head.verb in ("place", "stack") and head.target is not None:
            return replace(head, sentence=sentence)
    words = text.split()
    if any(w in ("don't", "dont", "not", "never", "avoid", "without") for w in words):
        return _unknown(sentence, "the step is negated; a negative step is not an action")
    verbs = _find_verbs(words, vocab.skills)
    if not verbs:
        return _unknown(sentence, f"no action verb recognised in {text!r}")
    if len(verbs) > 1:
        # "pick up the cup and put it in the rack": two actions in one step.
        names = ", ".join(" ".join(words[s:e]) for s, e, _ in verbs)
        return _unknown(sentence, f"the step names {len(verbs)} actions ({names}); one step must be one action")
    start, end, verb = verbs[0]
    if start > 0 and any(w not in FILLER and w not in ARTICLES for w in words[:start]):
        lead = " ".join(words[:start])
        return _unknown(sentence, f"unexpected words before the verb: {lead!r}")
    rest = words[end:]
    # Drop a source clause: "pick up the cup from the table", "move the cup from the table to the
    # rack" (up to the destination's preposition, which stays).
    for sp in sorted(SOURCE_PREPS, key=lambda p: -len(p.split())):
        spw = sp.split()
        for i in range(1, len(rest)):
            if rest[i : i + len(spw)] == spw:
                j = next((j for j in range(i + len(spw), len(rest)) if rest[j] in ("to", "into", "onto", "in")),
                         len(rest))
                rest = rest[:i] + rest[j:]
                break
    # "the cup you are holding", "the cup in your hand": the object in hand.
    held_ref = False
    for phrase in ("that you are holding", "you are holding", "that you hold", "you hold", "that is in your hand",
                   "in your hand", "in the gripper", "in hand", "held", "holding"):
        pw = phrase.split()
        for i in range(len(rest)):
            if rest[i : i + len(pw)] == pw:
                rest = rest[:i] + rest[i + len(pw) :]
                held_ref = True
                break
    # A trailing particle "pick the cup up", "put the cup down", "throw the napkin away".
    while rest and rest[-1] in ("up", "down", "away", "over", "back", "please", "now", "gently", "carefully"):
        if rest[-1] == "away" and verb == "place" and not any(p in rest for p in ("in", "into", "to")):
            rest = rest[:-1] + ["into", "bin"] if "bin" in vocab.targets or vocab.empty else rest[:-1]
            break
        rest = rest[:-1]
    throw_away = words[start:end] in (["throw", "away"], ["discard"], ["dispose", "of"])
    if throw_away and not any(p in rest for p in ("in", "into", "to", "inside")) and (
            "bin" in vocab.targets or vocab.empty):
        rest = rest + ["into", "bin"]
    obj_words, prep, target_words = _split_target(rest)
    if verb == "pick?":
        verb = "place" if prep is not None and target_words else "pick"
    obj_words = [w for w in obj_words if w not in ("up", "down", "away", "over", "and")]

    # The object: a pronoun refers to the object in hand (or the last one acted on).
    vwords = _vocab_words(vocab)
    obj_text = " ".join(obj_words)
    obj_core = [w for w in obj_words if w not in ARTICLES]
    if obj_core and all(w in PRONOUNS for w in obj_core):
        referent = context.held_object or context.last_object
        if referent is None:
            return _unknown(sentence, f"{obj_text!r} refers to an earlier object but none is known", verb=verb)
        obj = ObjectRef(text=obj_text, noun=referent.split()[-1], name=referent, candidates=(referent,))
    elif not obj_core:
        if verb == "place" and context.held_object:
            obj = ObjectRef(text="", noun=context.held_object.split()[-1], name=context.held_object,
                            candidates=(context.held_object,))
        else:
            return _unknown(sentence, f"{verb} needs an object and none is named", verb=verb)
    else:
        res = _parse_ref(obj_text, vocab.objects, vwords, "object")
        held = context.held_object
        # Only the object in hand can be placed: an ambiguous "put the cup in the rack" while holding
        # the red cup means the red cup; "the cup you are holding" says so explicitly.
        if held_ref and not held:
            return _unknown(sentence, f"{obj_text!r} refers to the object in hand but nothing is held", verb=verb)
        if held and (held_ref or verb in ("place", "stack")):
            fits_held = isinstance(_parse_ref(obj_text, (held,), vwords, "object"), ObjectRef)
            if fits_held and (held_ref or (isinstance(res, str) and res.startswith("ambiguous"))):
                res = ObjectRef(text=obj_text, noun=held.split()[-1], name=held, candidates=(held,))
            elif held_ref:
                return _unknown(sentence, f"{obj_text!r} is said to be in hand but the {held} is", verb=verb)
        if isinstance(res, str):
            return _unknown(sentence, res, verb=verb)
        obj = res

    # The target.
    target: str | None = None
    target_ref: ObjectRef | None = None
    if target_words:
        ttext = " ".join(target_words)
        res_t = _parse_ref(ttext, vocab.targets, vwords, "target") if vocab.targets or vocab.empty else None
        if isinstance(res_t, ObjectRef) and (res_t.name or not vocab.targets):
            target = res_t.name or ttext
        else:
            # The target may be another object ("stack the red block on the blue block").
            res_o = _parse_ref(ttext, vocab.objects, vwords, "target") if vocab.objects else None
            if isinstance(res_o, ObjectRef) and res_o.name:
                target_ref = res_o
                target = res_o.name
            else:
                if isinstance(res_t, str):
                    why = res_t
                elif isinstance(res_o, str):
                    why = res_o
                else:
                    why = (f"target {ttext!r} does not name one of this scene's destinations "
                           f"({', '.join(vocab.targets)})")
                return _unknown(sentence, why, verb=verb, obj=obj)
        if prep == "on top of" and verb == "place" and target_ref is not None:
            verb = "stack"
    if verb == "pick" and target is not None:
        return _unknown(sentence, f"pick with a destination {target!r}: is it a place?", verb=verb, obj=obj)
    if verb in ("place", "stack") and target is None:
        return _unknown(sentence, f"{verb} needs a destination and none is named", verb=verb, obj=obj)
    gripper = {"pick": "close", "place": "open", "stack": "open"}.get(verb)
    return ParsedStep(sentence=sentence, verb=verb, obj=obj, target=target, target_ref=target_ref, gripper=gripper)


def parse_goal(
    sentence: str,
    vocab: Vocabulary | None = None,
    context: ParseContext | None = None,
    step_index: int = 0,
    stamp: float = 0.0,
) -> ActionGoal:
    """``parse`` as an ActionGoal (references needing the image keep the phrase as ``object``)."""
    return parse(sentence, vocab, context).to_goal(step_index=step_index, stamp=stamp)
