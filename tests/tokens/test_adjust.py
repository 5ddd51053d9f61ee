"""Dynamic token adjustment: IoM, duplicate rule, and the strategy's prune / split / bookkeeping."""
import torch

from tokens.adjust import (AdjustConfig, NoAdjust, TokenAdjustStrategy, duplicate_tokens, iom_matrix, make_strategy,
                           token_masks_3d)
from tokens.assign import hungarian
from tokens.tokens import InstanceTokens

torch.set_num_threads(1)


def _m(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_iom_matrix_hand_computed():
    # A = {0,1,2,3}, B = {1,2} inside A, C = {4,5} disjoint.
    # IoM[B,A] = |B&A|/|B| = 2/2 = 1; IoM[A,B] = 2/4 = 0.5; all pairs with C are 0; diagonal 1.
    masks = _m([1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1])
    expect = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(iom_matrix(masks), expect)
    assert iom_matrix(_m([0, 0], [1, 0]))[0].tolist() == [0.0, 0.0]     # empty mask row -> 0


def test_duplicate_tokens_rules():
    # B enclosed by A -> B removed
    assert duplicate_tokens(_m([1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]), 0.8) == {1}
    # also when the enclosed token has the lower index
    assert duplicate_tokens(_m([0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]), 0.8) == {0}
    # disjoint -> none
    assert duplicate_tokens(_m([1, 1, 0, 0], [0, 0, 1, 1]), 0.8) == set()
    # equal masks -> keep one (the lower index)
    assert duplicate_tokens(_m([1, 1, 0], [1, 1, 0]), 0.8) == {1}
    # partial overlap: IoM[D, A] = |{3}| / |{3,4}| = 0.5 < 0.8 -> none
    assert duplicate_tokens(_m([1, 1, 1, 1, 0], [0, 0, 0, 1, 1]), 0.8) == set()
    # empty masks are left alone (useless rule handles them)
    assert duplicate_tokens(_m([1, 1, 0], [0, 0, 0]), 0.8) == set()
    # A encloses B and C (IoM 1 each) -> both removed
    assert duplicate_tokens(_m([1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]), 0.8) == {1, 2}


def test_token_masks_3d():
    # point 0: argmax 0 (0.9), > 0.5 for token 0; point 1: argmax 1 (0.7), token 0 (0.6) > 0.5 too;
    # point 2: argmax 0 but max 0.05 < 0.1 -> in no mask.
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.05, 0.02]])
    assert token_masks_3d(probs, 0.5, 0.1).tolist() == [[True, True, False], [False, True, False]]


def _tokens(n):
    means = torch.stack([torch.tensor([float(i), 0.0, 0.0]) for i in range(n)])
    return InstanceTokens(means, 0.1, 4, 2, generator=torch.Generator().manual_seed(0))


def _disjoint_probs(n, per=4):
    """[n * per, n]: token i owns points i*per .. i*per+per-1 with prob 0.9 (no duplicates)."""
    probs = torch.full((n * per, n), 0.01)
    for i in range(n):
        probs[i * per:(i + 1) * per, i] = 0.9
    return torch.zeros(n * per, 3), probs


def _feed(strat, its, cols, n, L=None):
    cols_t = torch.tensor(cols)
    L = len(cols) if L is None else L
    cost = torch.ones(L, n)
    cost[torch.arange(len(cols)), cols_t] = 0.0
    for it in its:
        strat.after_assignment(it, torch.arange(len(cols)), cols_t, cost, n)


def test_prune_useless_after_a_full_window():
    logs = []
    cfg = AdjustConfig(every_iters=10, window_iters=10, n_min=2)
    strat = TokenAdjustStrategy(cfg, logs.append)
    tok = _tokens(3)
    _feed(strat, range(1, 11), [0], 3)          # token 0 assigned in 10 frames
    _feed(strat, [5], [1], 3)                   # token 1 once, token 2 never
    assert not strat.due(5) and strat.step(5, tok, *_disjoint_probs(3)) is None
    out = strat.step(11, tok, *_disjoint_probs(3))
    # born at it 1, age 10 >= window: counts (10, 1, 0) -> tokens 1 and 2 are < n_min = 2
    assert out["keep"].tolist() == [True, False, False] and out["clone_of"] == []
    assert out["index_map"].tolist() == [0]
    assert tok.n == 1 and strat.n == 1
    assert len(logs) == 2 and all("useless" in m for m in logs)


def test_young_tokens_are_not_useless():
    strat = TokenAdjustStrategy(AdjustConfig(every_iters=5, window_iters=10, n_min=2))
    tok = _tokens(2)
    _feed(strat, range(1, 7), [0], 2)
    assert strat.step(6, tok, *_disjoint_probs(2)) is None      # due, but token 1 only 5 iterations old
    assert tok.n == 2


def test_min_tokens_kept():
    strat = TokenAdjustStrategy(AdjustConfig(every_iters=10, window_iters=10, n_min=5, min_tokens=1))
    tok = _tokens(3)
    _feed(strat, range(1, 4), [2], 3)           # nobody reaches n_min; token 2 is the most assigned
    out = strat.step(11, tok, *_disjoint_probs(3))
    assert out["keep"].tolist() == [False, False, True] and tok.n == 1


def test_prune_duplicate_and_patch_adam():
    logs = []
    strat = TokenAdjustStrategy(AdjustConfig(every_iters=10, window_iters=10, n_min=1), logs.append)
    tok = _tokens(3)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    tok.means.sum().backward()
    opt.step()
    _feed(strat, range(1, 11), [0, 1, 2], 3)
    pts, probs = _disjoint_probs(3)
    probs[0:2, 1] = 0.95                        # token 1 now owns points 0,1 only: inside token 0's {0..3}
    probs[4:8, 1] = 0.01
    out = strat.step(11, tok, pts, probs, optimizer=opt)
    assert out["keep"].tolist() == [True, False, True] and tok.n == 2
    assert "duplicate" in logs[0] and "token 1" in logs[0]
    held = [p for g in opt.param_groups for p in g["params"]]
    assert any(p is tok.means for p in held) and opt.state[tok.means]["exp_avg"].shape == (2, 3)
    opt.zero_grad()
    tok.features.sum().backward()
    opt.step()                                   # the patched optimizer works
    # history was re-indexed: old token 2 is now token 1 and keeps its count
    _feed(strat, range(12, 21), [0, 1], 2)
    assert strat.step(21, tok, *_disjoint_probs(2)) is None


def test_split_after_persistent_evidence():
    logs = []
    cfg = AdjustConfig(every_iters=10, window_iters=10, n_min=1, split_persist_checks=2, split_offset_m=0.02)
    strat = TokenAdjustStrategy(cfg, logs.append)
    tok = _tokens(2)
    with torch.no_grad():
        tok.log_scales[0] = torch.log(torch.tensor([0.1, 0.3, 0.2]))    # longest axis of token 0: y
    # both masks cost least at token 0; match = (0->1) + (1->0) = 0.5 + 0.2 = 0.7 < 0.1 + 0.9,
    # so mask 0 lost token 0 to mask 1: split evidence for token 0 in every frame.
    cost = torch.tensor([[0.1, 0.5], [0.2, 0.9]])
    rows, cols = hungarian(cost)
    assert cols.tolist() == [1, 0]

    def feed(its):
        for it in its:
            strat.after_assignment(it, rows, cols, cost, tok.n)

    feed(range(1, 11))
    assert strat.step(11, tok, *_disjoint_probs(2)) is None             # first check with evidence
    feed(range(12, 21))
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    tok.means.sum().backward()
    opt.step()
    mean0 = tok.means.detach()[0].clone()
    out = strat.step(21, tok, *_disjoint_probs(2), optimizer=opt)        # second consecutive check: split
    assert out["clone_of"] == [0] and out["keep"].tolist() == [True, True]
    assert out["index_map"].tolist() == [0, 1, 0] and tok.n == 3 and strat.n == 3
    # clone 2 cm along token 0's longest axis (y)
    assert torch.allclose(tok.means.detach()[2], mean0 + torch.tensor([0.0, 0.02, 0.0]), atol=1e-6)
    st = opt.state[tok.means]
    assert torch.equal(st["exp_avg"][2], st["exp_avg"][0])
    assert any("split token 0 -> new token 2" in m for m in logs)
    # the clone (born at 21) gets a full window; never assigned in 22..31, it is useless at 31
    feed_cost = torch.tensor([[0.1, 0.5, 0.6], [0.5, 0.1, 0.6]])
    r, c = hungarian(feed_cost)
    for it in range(22, 31):
        strat.after_assignment(it, r, c, feed_cost, tok.n)
    out = strat.step(31, tok, *_disjoint_probs(3))
    assert out["keep"].tolist() == [True, True, False] and "useless" in out["log"][0]


def test_split_respects_max_tokens():
    logs = []
    strat = TokenAdjustStrategy(AdjustConfig(every_iters=5, window_iters=5, n_min=1, split_persist_checks=1,
                                             max_tokens=2), logs.append)
    tok = _tokens(2)
    cost = torch.tensor([[0.1, 0.5], [0.2, 0.9]])
    rows, cols = hungarian(cost)
    for it in range(1, 6):
        strat.after_assignment(it, rows, cols, cost, 2)
    assert strat.step(6, tok, *_disjoint_probs(2)) is None and tok.n == 2
    assert any("max_tokens" in m for m in logs)


def test_no_adjust_and_state_round_trip():
    tok = _tokens(3)
    off = make_strategy(AdjustConfig(enabled=False))
    assert isinstance(off, NoAdjust)
    _feed(off, range(1, 500), [0], 3)
    assert not off.due(1000) and off.step(1000, tok, *_disjoint_probs(3)) is None and tok.n == 3
    on = TokenAdjustStrategy(AdjustConfig(every_iters=10, window_iters=10))
    _feed(on, range(1, 8), [0, 2], 3)
    copy = TokenAdjustStrategy(AdjustConfig(every_iters=10, window_iters=10))
    copy.load_state_dict(on.state_dict())
    assert copy.state_dict() == on.state_dict()


def test_no_splits_from_split_until_iters_on():
    logs = []
    cfg = AdjustConfig(every_iters=5, window_iters=5, n_min=1, split_persist_checks=1, split_until_iters=6)
    strat = TokenAdjustStrategy(cfg, logs.append)
    tok = _tokens(2)
    cost = torch.tensor([[0.1, 0.5], [0.2, 0.9]])                      # token 0 "stolen" in every frame
    rows, cols = hungarian(cost)
    for it in range(1, 6):
        strat.after_assignment(it, rows, cols, cost, 2)
    assert strat.step(6, tok, *_disjoint_probs(2)) is None and tok.n == 2    # evidence, but too late to split
    assert not any("split" in m for m in logs)
    cfg.split_until_iters = 0                                            # no limit: the same evidence splits
    for it in range(7, 12):
        strat.after_assignment(it, rows, cols, cost, 2)
    out = strat.step(12, tok, *_disjoint_probs(2))
    assert out is not None and out["clone_of"] == [0] and tok.n == 3


def test_split_evidence_needs_overlap_below_split_max_cost():
    # mask 1's best token is 0 (cost 0.95) but token 0 went to mask 0: evidence only without a cost limit
    # or with a limit above 0.95
    cost = torch.tensor([[0.1, 1.5], [0.95, 1.6]])
    rows, cols = hungarian(cost)
    assert cols.tolist() == [0, 1]
    for lim, expect in ((0.0, [0]), (1.0, [0]), (0.9, [])):
        strat = TokenAdjustStrategy(AdjustConfig(split_max_cost=lim))
        strat.after_assignment(1, rows, cols, cost, 2)
        assert strat.events[-1][2] == expect, lim


def test_match_coverage_hand_case():
    from tokens.assign import match_coverage
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0],      # token 0 renders pixels 0, 1
                         [0.0, 0.0, 0.5, 0.0]])     # token 1 half-renders pixel 2
    targets = torch.tensor([[1.0, 1.0, 1.0, 1.0],   # mask 0: all four pixels
                            [0.0, 0.0, 0.0, 1.0]])  # mask 1: pixel 3
    cov = match_coverage(pred, targets, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.allclose(cov, torch.tensor([0.5, 0.0]))        # 2 of 4 pixels; nothing of pixel 3
    cov = match_coverage(pred, targets, torch.tensor([0]), torch.tensor([1]))
    assert torch.allclose(cov, torch.tensor([0.125]))           # 0.5 of one pixel of 4
    assert match_coverage(pred, targets, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)).numel() == 0


def test_blind_split_clones_the_token_where_its_blind_masks_are():
    logs = []
    cfg = AdjustConfig(every_iters=10, window_iters=10, n_min=1, blind_max_overlap=0.1, blind_min_events=3,
                       blind_min_distance_m=0.3)
    strat = TokenAdjustStrategy(cfg, logs.append)
    tok = _tokens(2)                                 # means (0, 0, 0) and (1, 0, 0)
    cost = torch.tensor([[0.1, 1.9], [1.8, 1.9]])
    rows, cols = hungarian(cost)                     # mask 0 -> token 0, mask 1 -> token 1
    far = (4.0, 2.0, 1.0)
    for it in range(1, 11):                          # every match of token 1 is blind, its mask 4.5 m away
        strat.after_assignment(it, rows, cols, cost, 2, blind=[(1, (far[0] + 0.01 * (it % 3), far[1], far[2]))])
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    tok.means.sum().backward()
    opt.step()
    cls1 = tok.class_features.detach()[1].clone()
    out = strat.step(11, tok, *_disjoint_probs(2), optimizer=opt)
    assert out["clone_of"] == [1] and out["index_map"].tolist() == [0, 1, 1] and tok.n == 3
    assert torch.allclose(tok.means.detach()[2], torch.tensor([4.01, 2.0, 1.0]), atol=1e-5)   # the median
    assert torch.equal(tok.class_features.detach()[2], cls1)                                   # the class goes along
    assert any("blind split token 1 -> new token 2" in m for m in logs)
    # the state survives a round trip with the blind evidence
    copy = TokenAdjustStrategy(cfg)
    copy.load_state_dict(strat.state_dict())
    assert copy.state_dict() == strat.state_dict()


def test_blind_split_needs_distance_majority_and_the_rule_on():
    def run(cfg, blind_every, where):
        strat = TokenAdjustStrategy(cfg)
        tok = _tokens(2)
        cost = torch.tensor([[0.1, 1.9], [1.8, 1.9]])
        rows, cols = hungarian(cost)
        for it in range(1, 11):
            strat.after_assignment(it, rows, cols, cost, 2, blind=[(1, where)] if it % blind_every == 0 else [])
        return strat.step(11, tok, *_disjoint_probs(2))
    on = AdjustConfig(every_iters=10, window_iters=10, n_min=1, blind_max_overlap=0.1, blind_min_events=3)
    out = run(on, 1, (4.0, 2.0, 1.0))
    assert out is not None and out["clone_of"] == [1] and out["index_map"].tolist() == [0, 1, 1]
    assert run(on, 1, (1.1, 0.0, 0.0)) is None            # the masks are where the token is: a learning matter
    assert run(on, 3, (4.0, 2.0, 1.0)) is None            # 3 blind of 10 matches: not its main job
    off = AdjustConfig(every_iters=10, window_iters=10, n_min=1)
    assert run(off, 1, (4.0, 2.0, 1.0)) is None           # blind_max_overlap = 0: the rule is off
    late = AdjustConfig(every_iters=10, window_iters=10, n_min=1, blind_max_overlap=0.1, split_until_iters=5)
    assert run(late, 1, (4.0, 2.0, 1.0)) is None


def test_old_checkpoint_events_load():
    strat = TokenAdjustStrategy(AdjustConfig())
    strat.load_state_dict({"n": 2, "born": [0, 0], "persist": [0, 0], "events": [(1, [0, 1], [])], "last_check": 0})
    assert list(strat.events) == [(1, [0, 1], [], [])]
