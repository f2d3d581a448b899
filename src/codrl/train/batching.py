"""Training rows from advantage-scored episodes, and how they are cut into micro-batches.

Every row is built from token ids exactly as they were sampled (nothing is re-tokenized): the prompt
ids, the sampled completion ids with their rollout logprobs, a mask on the sampled tokens, and the
episode's advantage. :func:`micro_batches` groups rows under a token budget and :func:`collate`
pads them into the tensors the loss reads.

Under torch.distributed every process holds all rows; :func:`split_rows` deals them out to the
ranks balanced by token count and :func:`rank_micro_batches` gives every rank the same number of
micro-batches (padding with empty ones), because a sharded model's forward passes are collectives.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codrl.backends.kv_cache import common_prefix
from codrl.rollout.experience import Experience, ModelEpisode


@dataclass
class TrainSeq:
    """One training row: token ids, which positions are the model's sampled tokens, their rollout
    logprobs, the episode's advantage and pack position. Built from sampled token ids without
    re-tokenizing anything. When the update recomputes ``old_logprobs``, the rollout's own move to
    ``behaviour_logprobs`` (:mod:`codrl.algo.offpolicy`). ``env`` names the row's environment;
    ``teacher_logprobs`` are its teacher's logprobs when it distills (:mod:`codrl.train.teachers`)."""

    input_ids: list[int]
    mask: list[int]
    old_logprobs: list[float]
    advantage: float
    position: int = 0
    behaviour_logprobs: list[float] | None = None
    env: str = ""
    teacher_logprobs: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(self.mask)


def _seq(e: Experience, ep: ModelEpisode) -> TrainSeq:
    p = len(e.prompt_ids)
    return TrainSeq(e.input_ids, [0] * p + [1] * len(e.completion_ids), [0.0] * p + list(e.logprobs), ep.advantage,
                    ep.position, env=e.env)


def trainable_calls(episode: ModelEpisode) -> list[Experience]:
    """The calls of ``episode`` a trainer can learn from: token-exact ones that sampled something."""
    return [c for c in episode.calls if c.completion_ids and c.token_exact]


def to_sequences(episodes: Sequence[ModelEpisode], merge_turns: bool = True) -> list[TrainSeq]:
    """Training rows from advantage-scored episodes (their :func:`trainable_calls`).

    With ``merge_turns``, consecutive turns of one multi-turn episode whose token ids extend each
    other exactly (turn t+1's prompt starts with turn t's prompt + sampled completion) become one
    row with several trained spans, so a K-turn episode costs one forward pass instead of K
    quadratically growing ones. The check is on token ids, so nothing is re-tokenized; turns that
    do not extend each other stay separate rows.
    """
    out: list[TrainSeq] = []
    for ep in episodes:
        calls = trainable_calls(ep)
        if not merge_turns:
            out.extend(_seq(c, ep) for c in calls)
            continue
        if not calls:
            continue
        cur = _seq(calls[0], ep)
        for e in calls[1:]:
            n = cur.num_tokens
            if e.prompt_ids[:n] == cur.input_ids and len(e.prompt_ids) >= n:
                extra = len(e.prompt_ids) - n
                cur = TrainSeq(e.input_ids, cur.mask + [0] * extra + [1] * len(e.completion_ids),
                               cur.old_logprobs + [0.0] * extra + list(e.logprobs), cur.advantage, cur.position,
                               env=cur.env)
            else:
                out.append(cur)
                cur = _seq(e, ep)
        out.append(cur)
    return out


#: Shortest shared prefix worth computing once (below it, rows run in full).
MIN_SHARED_PREFIX = 8


def _unscored_len(e: TrainSeq) -> int:
    """How many leading tokens of a row no scored position depends on as its own position: a
    shared prefix may cover them (the first trained token is predicted from the token before it)."""
    first = next((i for i, m in enumerate(e.mask) if m), e.num_tokens)
    return max(0, first - 1)


def _sharable(a: TrainSeq, b: TrainSeq) -> int:
    """Leading tokens rows ``a`` and ``b`` could compute once: their common prefix, cut before
    either row's first scored position."""
    return min(common_prefix(a.input_ids, b.input_ids), _unscored_len(a), _unscored_len(b))


def shared_prefix_len(seqs: Sequence[TrainSeq]) -> int:
    """Length of the prefix that all of a micro-batch's rows can compute once (0: none worth sharing).

    The longest run of leading tokens every row has, cut before the first scored position of
    any row (:func:`codrl.train.scoring.score_tokens` with ``prefix_len``). Needs two rows or more.
    """
    if len(seqs) < 2:
        return 0
    n = min(_unscored_len(e) for e in seqs)
    first = seqs[0].input_ids
    for e in seqs[1:]:
        n = min(n, common_prefix(first, e.input_ids))
    return n if n >= MIN_SHARED_PREFIX else 0


@dataclass
class PrefixNode:
    """One node of a micro-batch's prefix tree (:func:`prefix_plan`).

    The node's tokens ``[start, end)`` are the same in every row below it and are computed once,
    in a pass of one row (``row``, an index into the micro-batch), on top of the parent's KV cache.
    ``batches`` are the rows whose own tokens start at ``end``: each batch is one pass of those
    rows' remaining tokens on top of this node's cache. The root has ``start == end == 0`` (no
    tokens, no cache): its batches are rows that share nothing worth sharing.
    """

    start: int
    end: int
    row: int
    children: list[PrefixNode]
    batches: list[list[int]]

    def walk(self) -> list[PrefixNode]:
        """This node and all below it, parents before children."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out

    def rows(self) -> list[int]:
        """Every row below this node (its batches' and its children's)."""
        return [r for n in self.walk() for b in n.batches for r in b]


#: Longest run of rows one pass of :func:`_batch_by_padding` considers (bounds its work to
#: rows x this; a longer run of equal rows is simply cut into passes of this many).
MAX_PASS_ROWS = 64


def _batch_by_padding(rows: list[int], own: list[int]) -> list[list[int]]:
    """Rows (with ``own`` tokens each, in the same order) cut into passes that minimise padded
    tokens plus :data:`MIN_SHARED_PREFIX` tokens' worth of overhead per pass (rows in order of
    length, contiguous runs of at most :data:`MAX_PASS_ROWS`; exact by dynamic programming)."""
    order = sorted(range(len(rows)), key=lambda i: own[i])
    n = len(order)
    best = [0] + [1 << 62] * n  # best[j]: cost of the first j rows of ``order``
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = own[order[j - 1]]
        for i in range(max(0, j - MAX_PASS_ROWS), j):
            c = best[i] + MIN_SHARED_PREFIX + (j - i) * width
            if c < best[j]:
                best[j], cut[j] = c, i
    out: list[list[int]] = []
    j = n
    while j:
        out.append(sorted(rows[order[k]] for k in range(cut[j], j)))
        j = cut[j]
    return out[::-1]


def prefix_plan(seqs: Sequence[TrainSeq]) -> PrefixNode:
    """How a micro-batch's rows compute their shared prefixes once: a tree of shared token runs.

    Rows in lexicographic order of their token ids; every run of rows sharing at least
    :data:`MIN_SHARED_PREFIX` more tokens than their parent node (never past any of their first
    scored positions) becomes a child node, recursively, so the system prompt shared by all rows
    is computed once, the repeats' shared first prompt once on top of it, and so on. Each node's
    remaining rows are cut into passes by :func:`_batch_by_padding`.
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].input_ids)
    adj = [_sharable(seqs[a], seqs[b]) for a, b in zip(order, order[1:])]  # of order[k] and order[k+1]

    def build(lo: int, hi: int, start: int, end: int) -> PrefixNode:
        # order[lo:hi] share their first ``end`` tokens; the node computes [start, end)
        node = PrefixNode(start, end, order[lo] if end > start else -1, [], [])
        loose: list[int] = []
        k = lo
        while k < hi:
            j = k
            while j + 1 < hi and adj[j] >= end + MIN_SHARED_PREFIX:
                j += 1
            if j > k:  # order[k..j] share at least MIN_SHARED_PREFIX more tokens
                node.children.append(build(k, j + 1, end, min(adj[k:j])))
            else:
                loose.append(order[k])
            k = j + 1
        if loose:
            node.batches = _batch_by_padding(loose, [seqs[r].num_tokens - end for r in loose])
        return node

    return build(0, len(order), 0, 0)


def plan_tokens(plan: PrefixNode, seqs: Sequence[TrainSeq], padded: bool = False) -> int:
    """Tokens a micro-batch's forward computes under ``plan``: each node's tokens once, and each
    row's own rest (``padded``: each pass's rows x its longest row, as the tensors are)."""
    total = 0
    for n in plan.walk():
        total += n.end - n.start
        for b in n.batches:
            own = [seqs[r].num_tokens - n.end for r in b]
            total += len(b) * max(own) if padded else sum(own)
    return total


def top_prefix_counts(micro: Sequence[Sequence[TrainSeq]],
                      plans: Sequence[PrefixNode | None] | None = None) -> dict[tuple[int, ...], int]:
    """In how many micro-batches of ``micro`` each top prefix (the tokens of a root child of
    :func:`prefix_plan`) appears; ``plans``: the micro-batches' plans when already made."""
    seen: dict[tuple[int, ...], int] = {}
    for i, rows in enumerate(micro):
        plan = plans[i] if plans is not None else prefix_plan(rows) if len(rows) > 1 else None
        for node in plan.children if plan is not None else ():
            key = tuple(rows[node.row].input_ids[: node.end])
            seen[key] = seen.get(key, 0) + 1
    return seen


def recurring_prefixes(micro: Sequence[Sequence[TrainSeq]],
                       plans: Sequence[PrefixNode | None] | None = None) -> set[tuple[int, ...]]:
    """The top prefixes found in more than one micro-batch of ``micro``: those an update may
    compute once for all of them (:class:`codrl.train.scoring.HeldPrefixes`)."""
    return {k for k, n in top_prefix_counts(micro, plans).items() if n > 1}


def computed_tokens(seqs: Sequence[TrainSeq], share_prefix: bool) -> int:
    """Tokens a micro-batch's forward computes (padding aside): every row in full, or each shared
    prefix once (:func:`prefix_plan`) and each row's rest."""
    if not share_prefix or len(seqs) < 2:
        return sum(e.num_tokens for e in seqs)
    return plan_tokens(prefix_plan(seqs), seqs)


def _by_length(seqs: list[TrainSeq], token_budget: int) -> list[list[TrainSeq]]:
    """Rows in order of length, cut so that a micro-batch's rows x longest row <= ``token_budget``."""
    batches: list[list[TrainSeq]] = []
    cur: list[TrainSeq] = []
    for e in sorted(seqs, key=lambda e: e.num_tokens):
        if cur and (len(cur) + 1) * max(e.num_tokens, cur[-1].num_tokens) > token_budget:
            batches.append(cur)
            cur = []
        cur.append(e)
    if cur:
        batches.append(cur)
    return batches


def micro_batches(seqs: list[TrainSeq], token_budget: int, share_prefix: bool = False) -> list[list[TrainSeq]]:
    """Cut rows into micro-batches of at most ``token_budget`` tokens of padded compute.

    Rows go in order of length, and a micro-batch holds rows x longest row <= ``token_budget``.
    With ``share_prefix`` the rows that share a prefix (the same system prompt, the repeats of a
    pack's first task) go in lexicographic order of their token ids, so that they sit side by
    side, and a micro-batch takes rows while its prefix tree's tokens (each row adding what it
    does not share with the one before) stay within the budget; one whose passes' padding takes
    the tree (:func:`prefix_plan`, :func:`plan_tokens`) over the budget is halved. Rows that share
    nothing with any other are packed by length.
    """
    if not share_prefix:
        return _by_length(seqs, token_budget)
    rows = sorted(seqs, key=lambda e: e.input_ids)
    shared = [_sharable(a, b) for a, b in zip(rows, rows[1:])]  # shared[k]: rows k and k + 1
    runs: list[list[int]] = []  # runs of rows, in token order, sharing a prefix worth sharing
    for k in range(len(rows)):
        if k and shared[k - 1] >= MIN_SHARED_PREFIX:
            runs[-1].append(k)
        else:
            runs.append([k])
    out: list[list[TrainSeq]] = []
    cur: list[TrainSeq] = []
    cost = 0  # the tree's tokens so far: in token order, each row adds what it does not share with the last
    for run in (r for r in runs if len(r) > 1):
        for k in run:
            own = rows[k].num_tokens - (shared[k - 1] if cur and k != run[0] else 0)
            if cur and cost + own > token_budget:
                out += _fit(cur, token_budget)
                cur, cost, own = [], 0, rows[k].num_tokens
            cur.append(rows[k])
            cost += own
    if cur:
        out += _fit(cur, token_budget)
    loose = [rows[r[0]] for r in runs if len(r) == 1]  # rows that share nothing: packed by length
    return out + _by_length(loose, token_budget)


def _fit(rows: list[TrainSeq], token_budget: int) -> list[list[TrainSeq]]:
    """``rows`` as one micro-batch, or halves of it (recursively) where the padding of its passes
    takes its prefix tree over ``token_budget``."""
    if len(rows) == 1 or plan_tokens(prefix_plan(rows), rows, padded=True) <= token_budget:
        return [rows]
    mid = len(rows) // 2
    return _fit(rows[:mid], token_budget) + _fit(rows[mid:], token_budget)


def balance_by_tokens(tokens: Sequence[int], parts: int) -> list[list[int]]:
    """Deal items of the given token counts out to ``parts`` bins of near-equal total tokens.

    Longest-processing-time greedy: items in decreasing size (ties by index) each go to the bin
    with the fewest tokens so far (ties to the lowest bin), so no bin ends more than one item
    above the mean, and the largest bin is within 4/3 of the best possible split. Deterministic:
    every rank computes the same split from the same rows with no communication. Returns each
    bin's item indices in increasing order (one bin holds every index in order when
    ``parts == 1``).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    bins: list[list[int]] = [[] for _ in range(parts)]
    loads = [(0, b) for b in range(parts)]  # a heap of (tokens so far, bin)
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        load, b = heapq.heappop(loads)
        bins[b].append(i)
        heapq.heappush(loads, (load + tokens[i], b))
    return [sorted(b) for b in bins]


def split_rows(seqs: list[TrainSeq], parts: int) -> list[list[TrainSeq]]:
    """The rows of each of ``parts`` ranks, balanced by token count (:func:`balance_by_tokens`),
    each rank's in their order in ``seqs``."""
    return [[seqs[i] for i in idx] for idx in balance_by_tokens([s.num_tokens for s in seqs], parts)]


def rank_micro_batches(shares: list[list[TrainSeq]], token_budget: int, rank: int,
                       share_prefix: bool = False) -> list[list[TrainSeq]]:
    """Micro-batches of ``shares[rank]``, padded with empty ones up to the most any rank has.

    ``shares`` holds every rank's rows. All ranks then run the same number of forward and backward
    passes, which a sharded model (FSDP2 all-gathers parameters in every forward) and the last
    micro-batch's gradient reduction need; an empty micro-batch stands for a zero-weighted pass.
    """
    cut = [micro_batches(rows, token_budget, share_prefix) for rows in shares]
    mine = cut[rank]
    return mine + [[] for _ in range(max(map(len, cut)) - len(mine))]


def filler_row(pad_id: int) -> TrainSeq:
    """A two-token row with one scored position, for a zero-weighted pass of a rank with no rows left."""
    return TrainSeq([pad_id, pad_id], [0, 1], [0.0, 0.0], 0.0)


def collate(seqs: list[TrainSeq], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad rows into tensors aligned with next-token logprobs ([B, T-1]), with each row's
    advantage and pack position ([B]); a row without behaviour logprobs has its old ones there."""
    width = max(e.num_tokens for e in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    old = torch.zeros((len(seqs), width), dtype=torch.float32)
    behaviour = torch.zeros((len(seqs), width), dtype=torch.float32)
    for r, e in enumerate(seqs):
        n = e.num_tokens
        ids[r, :n] = torch.tensor(e.input_ids)
        attn[r, :n] = 1
        mask[r, :n] = torch.tensor(e.mask, dtype=torch.float32)
        old[r, :n] = torch.tensor(e.old_logprobs, dtype=torch.float32)
        behaviour[r, :n] = torch.tensor(e.old_logprobs if e.behaviour_logprobs is None else e.behaviour_logprobs,
                                        dtype=torch.float32)
    adv = torch.tensor([e.advantage for e in seqs], dtype=torch.float32)
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "mask": mask[:, 1:].to(device),
            "old_logprobs": old[:, 1:].to(device), "behaviour_logprobs": behaviour[:, 1:].to(device),
            "advantages": adv.to(device), "positions": torch.tensor([e.position for e in seqs]).to(device)}
