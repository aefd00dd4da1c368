"""Screening ShareGPT first turns into a clean benign pool, and tagging sensitive topics.

Two different questions, kept apart on purpose:

- *Is the request harmful?* (`harm_reason`): jailbreak attempts (ShareGPT has many DAN-style
  prompts), harmful-intent phrasings (an action verb aimed at a harm: "how do I make a pipe bomb",
  "hack into my ex's account", "without getting caught"), explicit sexual content, and near-copies
  of a known harmful behaviour. Any of these drops the prompt from the benign pool.
- *Does it touch a sensitive topic?* (`topic_words`): medicine, drugs, security, chemistry,
  weapons, crime... This never drops a prompt. A probe trained on benign data scrubbed of these
  topics learns the topic, not the intent; topic-matched benign prompts are kept as their own
  hard-negative group instead.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from assay.data.jailbreaks import UNFILLED_PLACEHOLDER

# ----------------------------------------------------------------------------- sensitive topics

TOPIC_STEMS = (
    # medicine and drugs
    "drug", "dose", "dosage", "overdose", "medication", "medicine", "prescri", "pharmac", "opioid", "fentanyl",
    "morphine", "cocaine", "heroin", "methamphetamine", "meth", "cannabis", "marijuana", "lsd", "mdma", "narcotic",
    "pill", "toxic", "toxin", "poison", "lethal", "addict",
    # chemistry and biology
    "chemical", "chemistry", "synthes", "reagent", "explosive", "nitrate", "pathogen", "virus", "bacteria",
    "bioweapon", "nerve agent", "radioactive", "nuclear", "uranium",
    # weapons, violence, war
    "weapon", "gun", "firearm", "rifle", "pistol", "ammunition", "bomb", "grenade", "missile", "knife", "sword",
    "military", "war", "kill", "murder", "assassin", "violence", "violent", "attack", "terror", "shoot", "torture",
    "genocide", "massacre", "blood",
    # security and crime
    "hack", "malware", "ransomware", "exploit", "vulnerab", "phishing", "password", "cyber", "breach", "crime",
    "criminal", "illegal", "steal", "theft", "fraud", "scam", "launder", "smuggl", "police", "prison", "arrest",
    "abuse", "harass", "suicide", "self-harm", "extremis", "racis", "hate", "counterfeit", "evade", "bypass",
)
# Short stems that would match unrelated words as prefixes ("war" in "warm") must match whole words.
_EXACT = {"war": "wars?|warfare", "gun": "guns?|gunfire|gunman", "meth": "meth", "pill": "pills?", "lsd": "lsd",
          "mdma": "mdma", "dose": "doses?|dosing", "kill": "kill(?:s|ed|er|ers|ing)?", "hate": "hate(?:s|d|ful)?",
          "steal": "steal(?:s|ing)?|stole(?:n)?", "shoot": "shoot(?:s|ing|er)?", "blood": "blood(?:y|shed)?",
          "arrest": "arrest(?:s|ed)?", "sword": "swords?", "knife": "knife|knives", "racis": "racis\\w*"}
TOPIC_RE = re.compile(
    r"\b(?:" + "|".join(_EXACT.get(s, re.escape(s) + r"\w*") for s in TOPIC_STEMS) + r")\b", re.IGNORECASE
)


def topic_words(text: str) -> list[str]:
    """Sensitive-topic words in `text` (lower-cased), e.g. ["overdose", "medication"]."""
    return [m.group(0).lower() for m in TOPIC_RE.finditer(text)]


# ----------------------------------------------------------------------------- harm screen

_JAILBREAK = re.compile(
    r"do anything now|jailbr[eo]ak|developer mode|\bdev mode\b|ignore (?:all |any )?(?:the )?"
    r"(?:previous|prior|above|your|openai)\b.{0,20}\b(?:instructions|rules|guidelines|polic)|"
    r"(?:no|without|free from|not bound by|break free of|don'?t have) (?:any )?(?:ethical|moral|content|openai)"
    r"(?: \w+)? (?:guidelines|restrictions|filters|limits|policies|rules|constraints)|"
    r"unfiltered|uncensored|stay in character|opposite mode|antigpt|pretend (?:to be|you are|you're)"
    r" .{0,60}(?:no|without) (?:rules|restrictions|limits|filters)|as an unrestricted|evil (?:trusted )?confidant|"
    r"\bnsfw\b",
    re.IGNORECASE,
)

# Persona names of famous jailbreaks, upper-case only ("Dan" is a name, "aim" a verb).
_JAILBREAK_NAMES = re.compile(r"\b(?:DAN|AIM|STAN|DUDE|BetterDAN|KEVIN)\b")

_HARM_OBJ = (
    r"(?:pipe |nail |homemade |dirty )?bombs?|explosives?|napalm|molotov|thermite|nerve (?:agent|gas)|sarin|"
    r"ricin|anthrax|bio-?weapons?|chemical weapons?|meth(?:amphetamine)?|crack cocaine|cocaine|heroin|fentanyl|"
    r"ghost guns?|silencers?|untraceable (?:gun|firearm)s?|poisons?|ransomware|keyloggers?|botnets?|"
    r"computer virus(?:es)?|malware|ddos attacks?|fake (?:ids?|passports?|money|currency)|counterfeit (?:money|bills)"
)
_HARM_INTENT = re.compile(
    # an action aimed at a harm object: "how to make a bomb", "help me build ransomware"
    r"\b(?:make|build|create|cook|synthe[sz]i[sz]e|manufacture|produce|brew|assemble|write|code|develop|deploy|"
    r"spread|plant|detonate|obtain|buy|acquire)\b\W+(?:\w+\W+){0,3}?(?:" + _HARM_OBJ + r")\b"
    # violence against a person, asked for ("how do I poison my boss"; fiction's "begged him not to kill
    # her" must pass)
    r"|\b(?:how (?:to|do i|can i|could i|would i|should i|do you|can you|can we)|help me|ways? to|best way to|"
    r"i (?:want|need|plan|am going) to|i'm going to|teach me to|tips? (?:on|for|to))\W+(?:\w+\W+){0,2}?"
    r"(?:kill|murder|poison|hurt|stab|shoot|kidnap|abduct|strangle|torture|rape|beat up|steal from|rob)\b\W+"
    r"(?:someone|somebody|a person|people|my (?:\w+ )?(?:wife|husband|boss|neighbou?r|ex|teacher|friend|mom|"
    r"mother|dad|father|brother|sister|classmate|roommate|girlfriend|boyfriend|coworker|colleague)|him|her|them|"
    r"a (?:bank|store|shop|house|child|kid))\b"
    r"|\bkill (?:myself|yourself)\b|\bsuicide (?:method|note)s?\b|\bhow (?:can|do|should) i (?:end|take) my (?:own )?life\b"
    # intrusion, theft, fraud, evasion
    r"|\b(?:hack|break) into\b|\bsteal (?:a |an |the |someone|somebody|money|credit|identit|passwords?|data)"
    r"|\b(?:without|avoid|evade|evading|avoiding) (?:getting caught|being caught|being detected|detection|the police|"
    r"law enforcement|being traced|leaving (?:a )?trace)|\bget away with\b|\blaunder(?:ing)? (?:money|funds|cash)\b"
    r"|\bidentity theft\b|\bcredit card (?:numbers|fraud|skimm)|\bphishing (?:e-?mail|page|site|link|message)s?\b"
    r"|\bchild (?:porn|sexual)|\b(?:racist|sexist|hateful|homophobic|antisemitic) (?:joke|slur|essay|post|tweet|rant)s?\b",
    re.IGNORECASE,
)
_EXPLICIT = re.compile(
    r"\b(?:sex scene|sexual(?:ly)? explicit|erotic\w*|porn\w*|nudes?|naked|fetish\w*|horny|orgasm\w*|cum|"
    r"blowjob|dick|pussy|cock|boobs|tits|hentai|bdsm|masturbat\w*)\b",
    re.IGNORECASE,
)

# English detection without a language model: mostly ASCII letters, and some common English words.
_STOPWORDS = frozenset(
    "the a an and or of to in on for with is are was be it this that you i me my we your what how why can "
    "please do does write make give explain about from as at by not if which who when where should would could".split()
)
_WORD = re.compile(r"[A-Za-z']+")


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    words = [w.lower() for w in _WORD.findall(text)]
    if ascii_share < 0.97 or not words:
        return False
    stop = sum(w in _STOPWORDS for w in words)
    return stop >= 1 and stop / len(words) >= 0.12


def harm_reason(text: str) -> str | None:
    """Why `text` cannot be a benign example ("jailbreak", "harmful_intent", "explicit"), or None."""
    if _JAILBREAK.search(text) or _JAILBREAK_NAMES.search(text):
        return "jailbreak"
    if _HARM_INTENT.search(text):
        return "harmful_intent"
    if _EXPLICIT.search(text):
        return "explicit"
    return None


@dataclass
class ScreenReport:
    """What the screen did to the ShareGPT first turns, for the dataset card."""

    records: int = 0
    first_user_turns: int = 0
    kept: int = 0
    topic_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, text: str) -> None:
        self.dropped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(text[:100])

    def as_dict(self) -> dict:
        return {"records": self.records, "first_user_turns": self.first_user_turns, "kept": self.kept,
                "topic_kept": self.topic_kept, "dropped": dict(sorted(self.dropped.items()))}


def format_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    """Why `text` is unusable for reasons of form (language, length, template-like braces), or None."""
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    if len(text.split()) < 4:
        return "too_short"
    if not is_english(text):
        return "not_english"
    if UNFILLED_PLACEHOLDER.search(text):
        return "template_like"  # "{{ name }}" in a benign prompt would look like an unfilled template
    return None
