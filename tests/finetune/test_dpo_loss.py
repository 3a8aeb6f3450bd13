"""DPO's arithmetic: the loss against a hand computation, summed log-probabilities against a direct
gather over full logits, and what the response mask leaves out (prompt, padding)."""

import math

import pytest
import torch
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.finetune.dpo import Pair, collate, dpo_loss, loss_fn, preference_metrics, sequence_logprobs
from scratchllm.model import GPT

# Two pairs over a vocabulary of 3 tokens, padded with id 0:
#   A: prompt [2],    chosen [2, 0, 1], rejected [2, 1]     (reference log-probs -1.0, -2.0)
#   B: prompt [1, 0], chosen [1, 0, 2], rejected [1, 0, 0]  (reference log-probs -3.0, -1.0)
PAIRS = [Pair([2, 0, 1], [2, 1], 1, -1.0, -2.0), Pair([1, 0, 2], [1, 0, 0], 2, -3.0, -1.0)]
# The logits a fake model gives for the batch's rows (A chosen, B chosen, A rejected, B rejected) at
# positions 0, 1, 2. The counted predictions are (position t predicts token t+1):
#   A chosen: position 0 -> token 0, position 1 -> token 1; B chosen: position 1 -> token 2;
#   A rejected: position 0 -> token 1; B rejected: position 1 -> token 0.
# The 9s are predictions of prompt tokens, of padding or past the end: they must not count.
LOGITS = [
    [[2., 0., 0.], [0., 1., 0.], [9., 9., 9.]],
    [[9., 0., 9.], [0., 0., 3.], [9., 9., 9.]],
    [[1., 1., 0.], [9., 9., 9.], [9., 9., 9.]],
    [[0., 9., 9.], [0., 2., 0.], [9., 9., 9.]],
]
E = math.e
# log softmax(logits)[token], written out
PI_A_CHOSEN = (2 - math.log(E ** 2 + 2)) + (1 - math.log(E + 2))
PI_B_CHOSEN = 3 - math.log(E ** 3 + 2)
PI_A_REJECTED = 1 - math.log(2 * E + 1)
PI_B_REJECTED = 0 - math.log(E ** 2 + 2)
BETA = 0.5


class FixedLogits(nn.Module):
    """A 'model' whose final features are LOGITS and whose head is the identity."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the model has a device
        self.lm_head = nn.Identity()
        self.calls = 0

    def features(self, idx):
        self.calls += 1
        assert idx.tolist() == [[2, 0, 1], [1, 0, 2], [2, 1, 0], [1, 0, 0]]
        return torch.tensor(LOGITS) + self.anchor


def neg_logsigmoid(x):
    return math.log(1 + math.exp(-x))


def test_the_loss_equals_a_hand_computation():
    batch = collate(PAIRS, pad_id=0)
    reward = {"A_c": BETA * (PI_A_CHOSEN + 1.0), "A_r": BETA * (PI_A_REJECTED + 2.0),
              "B_c": BETA * (PI_B_CHOSEN + 3.0), "B_r": BETA * (PI_B_REJECTED + 1.0)}
    expected = (neg_logsigmoid(reward["A_c"] - reward["A_r"]) + neg_logsigmoid(reward["B_c"] - reward["B_r"])) / 2
    model = FixedLogits()
    loss = loss_fn(model, batch, beta=BETA)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert model.calls == 1  # one forward pass for chosen and rejected together
    loss.backward()
    assert model.anchor.grad is not None  # the loss reaches the policy

    logps = sequence_logprobs(model, batch["input_ids"], batch["response_mask"])
    assert logps.tolist() == pytest.approx([PI_A_CHOSEN, PI_B_CHOSEN, PI_A_REJECTED, PI_B_REJECTED], rel=1e-6)
    m = preference_metrics(model, [batch], BETA)
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert m["reward_chosen"] == pytest.approx((reward["A_c"] + reward["B_c"]) / 2, rel=1e-6)
    assert m["reward_rejected"] == pytest.approx((reward["A_r"] + reward["B_r"]) / 2, rel=1e-6)
    margins = [reward["A_c"] - reward["A_r"], reward["B_c"] - reward["B_r"]]
    assert m["reward_margin"] == pytest.approx(sum(margins) / 2, rel=1e-6)
    assert m["preference_accuracy"] == sum(x > 0 for x in margins) / 2
    assert m["ref_logp_margin"] == pytest.approx(((-1.0 + 2.0) + (-3.0 + 1.0)) / 2)


def test_dpo_loss_formula_and_its_limits():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-4.0, -2.0], [-5.0, -1.0], [-4.5, -2.5], [-4.0, -3.0]))
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    by_hand = [neg_logsigmoid(0.1 * ((-4.0 + 4.5) - (-5.0 + 4.0))), neg_logsigmoid(0.1 * ((-2.0 + 2.5) - (-1.0 + 3.0)))]
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.05, 0.05]) and rejected.tolist() == pytest.approx([-0.1, 0.2])
    same, c, r = dpo_loss(rc, rr, rc, rr, beta=0.1)  # the policy is the reference: log 2, no reward
    assert same.item() == pytest.approx(math.log(2)) and c.abs().max() == 0 and r.abs().max() == 0


def tiny_gpt(seed=0, vocab=64):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, context_length=32, n_layer=2, n_head=2, n_embd=16))


def test_summed_logprobs_equal_a_direct_gather_over_full_logits():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (3, 12), generator=g)
    mask = torch.rand(3, 12, generator=g) > 0.4
    logits = model(ids)  # (3, 12, 64)
    per_token = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (3, 11)
    direct = (per_token * mask[:, 1:]).sum(-1)
    ours = sequence_logprobs(model, ids, mask)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(ours.sum(), model.tok_emb.weight)
    (g2,) = torch.autograd.grad(direct.sum(), model.tok_emb.weight)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_collate_masks_the_prompt_and_always_the_padding():
    pairs = [Pair([5, 6, 7, 8, 1], [5, 6, 7, 9], 3, -1.0, -2.0), Pair([4, 3, 1], [4, 3, 2, 2, 1, 1], 1, -3.0, -4.0)]
    b = collate(pairs, pad_id=1)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 1, 1], [4, 3, 1, 1, 1, 1],  # chosen rows, then rejected
                                       [5, 6, 7, 9, 1, 1], [4, 3, 2, 2, 1, 1]]
    assert b["response_mask"].int().tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0],
                                                 [0, 0, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1]]
    assert b["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    full = collate(pairs, pad_id=1, mask_prompt=False)
    assert full["response_mask"].int().tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0],
                                                    [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]


def test_padding_never_counts_and_the_prompt_cancels_in_the_loss():
    policy, reference = tiny_gpt(0), tiny_gpt(1)
    pairs = [Pair([3, 4, 5, 6, 7], [3, 4, 5, 9], 3), Pair([8, 2, 2], [8, 2, 2, 2, 4, 6], 1)]
    b = collate(pairs, pad_id=0)
    other_pad = collate(pairs, pad_id=63)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(policy, b["input_ids"], b["response_mask"]),
                                   sequence_logprobs(policy, other_pad["input_ids"], other_pad["response_mask"]))
    losses, rewards = [], []
    for mask_prompt in (True, False):
        batch = collate(pairs, pad_id=0, mask_prompt=mask_prompt)
        with torch.no_grad():
            ref = sequence_logprobs(reference, batch["input_ids"], batch["response_mask"])
        for p, rc, rr in zip(pairs, ref[:2].tolist(), ref[2:].tolist()):
            p.ref_chosen, p.ref_rejected = rc, rr
        batch = collate(pairs, pad_id=0, mask_prompt=mask_prompt)
        with torch.no_grad():
            losses.append(loss_fn(policy, batch, beta=0.1).item())
            rewards.append(preference_metrics(policy, [batch], 0.1)["reward_chosen"])
    # the prompt's log-probabilities are the same in a pair's two rows: the loss does not move, the rewards do
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert rewards[0] != pytest.approx(rewards[1], rel=1e-3)
