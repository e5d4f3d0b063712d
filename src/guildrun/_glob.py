"""Path globs matched without backtracking.

A plan's globs (a specialist's ``files``, ``writes:``, ``ignore:``) are often written by a
language model, and a backtracking regex turns ``**a**a**a**a**a**b`` into minutes of work
per path. Here a glob is compiled into a row of tokens and matched by simulating its
automaton: the set of "how much of the pattern is matched so far" is one integer, one bit
per token, advanced once per character of the path. The cost is bounded by
path length x pattern length / 64, whatever the pattern, and nothing is ever retried.

Most globs have at most one star (``src/**``, ``*.py``, ``a/b.py``); they skip the automaton:
the fixed text around the star is compared at both ends of the path.

Syntax: ``*`` matches within one folder, ``**`` across folders, ``**/`` zero or more whole
folders, ``?`` one character but ``/``, ``[abc]`` ``[a-z]`` ``[!a]`` (or ``[^a]``) one
character of a set; ``[`` without a closing ``]`` is itself. Everything else is literal.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_GLOB = 4096  # characters; a longer pattern is refused (it is never a real path glob)

# Token kinds. Fixed ones consume exactly one character; stars consume any number.
_LIT, _ANY, _SET = 0, 1, 2
_STAR, _DSTAR, _DSS = 3, 4, 5  # [^/]*   .*   (?:.*/)?
_STARS = (_STAR, _DSTAR, _DSS)


@dataclass(frozen=True, slots=True)
class _CharSet:
    negated: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def __contains__(self, c: object) -> bool:
        assert isinstance(c, str)
        hit = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)
        return hit != self.negated


Token = tuple[int, str | _CharSet | None]


def _parse_set(body: str, pattern: str) -> _CharSet:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    if not body:
        raise ValueError(f"bad glob pattern {pattern!r}: an empty [] set")
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        c = body[i]
        if i + 2 < len(body) and body[i + 1] == "-":
            hi = body[i + 2]
            if hi < c:
                raise ValueError(f"bad glob pattern {pattern!r}: bad range {c}-{hi}")
            ranges.append((c, hi))
            i += 3
        else:
            chars.add(c)
            i += 1
    return _CharSet(negated, frozenset(chars), tuple(ranges))


def _tokens(pattern: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        tok: Token
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                    tok = (_DSS, None)
                else:
                    tok = (_DSTAR, None)
            else:
                i += 1
                tok = (_STAR, None)
            # Runs of stars that mean the same as one are folded, so `****` costs one token.
            if out and out[-1][0] in _STARS:
                prev = out[-1][0]
                if prev == tok[0] or _DSTAR in (prev, tok[0]):
                    out[-1] = (_DSTAR if _DSTAR in (prev, tok[0]) else prev, None)
                    continue
            out.append(tok)
            continue
        if c == "?":
            out.append((_ANY, None))
        elif c == "[" and (end := pattern.find("]", i + 1)) != -1:
            out.append((_SET, _parse_set(pattern[i + 1 : end], pattern)))
            i = end
        else:
            out.append((_LIT, c))
        i += 1
    return out


def _fixed_at(tokens: list[Token], path: str, pos: int) -> bool:
    """Do star-free `tokens` match path[pos : pos + len(tokens)] (the slice must exist)?"""
    for k, (kind, arg) in enumerate(tokens):
        c = path[pos + k]
        if kind == _LIT:
            if c != arg:
                return False
        elif kind == _ANY:
            if c == "/":
                return False
        elif c not in arg:  # type: ignore[operator]  # a _SET token's arg is a _CharSet
            return False
    return True


def _literal(tokens: list[Token]) -> str | None:
    if all(kind == _LIT for kind, _ in tokens):
        return "".join(str(arg) for _, arg in tokens)
    return None


class Glob:
    """A compiled glob; `match(path)` says whether the whole path matches."""

    __slots__ = (
        "_adv_lit",
        "_any",
        "_cache",
        "_dss",
        "_end",
        "_head",
        "_head_lit",
        "_mode",
        "_sets",
        "_star",
        "_stars",
        "_stay_all",
        "_tail",
        "_tail_lit",
        "_tokens",
        "pattern",
    )

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_GLOB:
            raise ValueError(f"glob pattern of {len(pattern)} characters (at most {MAX_GLOB})")
        if "\x00" in pattern:
            raise ValueError("a glob pattern cannot contain a NUL byte")
        self.pattern = pattern
        tokens = _tokens(pattern)
        self._tokens = tokens
        stars = [k for k, (kind, _) in enumerate(tokens) if kind in _STARS]
        if len(stars) == 0:
            self._mode = 0
            self._head = tokens
            self._head_lit = _literal(tokens)
        elif len(stars) == 1:
            self._mode = 1
            k = stars[0]
            self._star = tokens[k][0]
            self._head, self._tail = tokens[:k], tokens[k + 1 :]
            self._head_lit, self._tail_lit = _literal(self._head), _literal(self._tail)
        else:
            self._mode = 2
            # The fixed text before the first star and after the last one must stand at the
            # ends of the path: a cheap test that turns most paths away before the automaton.
            self._head, self._tail = tokens[: stars[0]], tokens[stars[-1] + 1 :]
            self._compile_automaton(tokens)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def match(self, path: str) -> bool:
        if self._mode == 0:
            if self._head_lit is not None:
                return path == self._head_lit
            return len(path) == len(self._head) and _fixed_at(self._head, path, 0)
        if self._mode == 1:
            return self._match_one_star(path)
        head, tail = self._head, self._tail
        if len(path) < len(head) + len(tail):
            return False
        if not _fixed_at(head, path, 0) or not _fixed_at(tail, path, len(path) - len(tail)):
            return False
        return self._run(path)

    # ------------------------------------------------------------------ one star

    def _match_one_star(self, path: str) -> bool:
        head, tail = self._head, self._tail
        start, end = len(head), len(path) - len(tail)
        if end < start:
            return False
        if self._head_lit is not None:
            if not path.startswith(self._head_lit):
                return False
        elif not _fixed_at(head, path, 0):
            return False
        if self._tail_lit is not None:
            if not path.endswith(self._tail_lit):
                return False
        elif not _fixed_at(tail, path, end):
            return False
        if self._star == _STAR:
            return path.find("/", start, end) == -1
        if self._star == _DSS:
            return start == end or path[end - 1] == "/"
        return True

    # ------------------------------------------------------------------ automaton

    def _compile_automaton(self, tokens: list[Token]) -> None:
        # Bit k set: the first k positions match what was read so far. `**/` takes three
        # positions: an entry that reads nothing and may jump over the rest (the empty
        # case), a loop over any character, and a '/'.
        adv_lit: dict[str, int] = {}
        any_mask = star = loop = entry = 0
        sets: list[tuple[int, _CharSet]] = []
        k = 0
        for kind, arg in tokens:
            bit = 1 << k
            if kind == _LIT:
                assert isinstance(arg, str)
                adv_lit[arg] = adv_lit.get(arg, 0) | bit
            elif kind == _ANY:
                any_mask |= bit
            elif kind == _SET:
                assert isinstance(arg, _CharSet)
                sets.append((bit, arg))
            elif kind == _STAR:
                star |= bit
            elif kind == _DSTAR:
                loop |= bit
            else:
                entry |= bit
                loop |= bit << 1
                adv_lit["/"] = adv_lit.get("/", 0) | (bit << 2)
                k += 2
            k += 1
        self._adv_lit = adv_lit
        self._any = any_mask
        self._sets = sets
        self._stars = star | loop | entry  # positions that may match nothing
        self._star = star
        self._stay_all = loop
        self._dss = entry
        self._end = 1 << k
        self._cache: dict[str, tuple[int, int]] = {}

    def _closure(self, d: int) -> int:
        # A set bit on a star also sets the bits after it, through a run of stars: adding
        # the active stars to the run's mask carries a 1 to the end of the run.
        e, entry = self._stars, self._dss
        while True:
            d = d | ((e + (d & e)) ^ e)
            jumped = d | ((d & entry) << 3)
            if jumped == d:
                return d
            d = jumped

    def _masks(self, c: str) -> tuple[int, int]:
        got = self._cache.get(c)
        if got is not None:
            return got
        adv = self._adv_lit.get(c, 0)
        for bit, charset in self._sets:
            if c in charset:
                adv |= bit
        if c == "/":
            stay = self._stay_all
        else:
            adv |= self._any
            stay = self._stay_all | self._star
        if len(self._cache) < 4096:
            self._cache[c] = (adv, stay)
        return adv, stay

    def _run(self, path: str) -> bool:
        d = self._closure(1)
        masks = self._masks
        closure = self._closure
        for c in path:
            adv, stay = masks(c)
            d = closure(((d & adv) << 1) | (d & stay))
            if not d:
                return False
        return bool(d & self._end)


def compile_glob(pattern: str) -> Glob:
    """Compile `pattern`, or raise ValueError saying what is wrong with it."""
    return Glob(pattern)
